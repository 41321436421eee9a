"""POPE (Li et al. 2023) as an ``evaluate`` metric.

Inputs: ``predictions`` = raw model answers, ``references`` = labels "yes"/"no". Keyword ``mode`` = "official"
(POPE's parsing) or "lmms-eval" (exact match after lower/strip). Output: accuracy, precision, recall, f1,
yes_ratio (yes = positive) and the confusion counts; see ``vlm_attn.eval.pope``.
"""

import datasets
import evaluate

from vlm_attn.eval.pope import pope_metrics

_CITATION = """\
@inproceedings{li2023evaluating,
  title={Evaluating Object Hallucination in Large Vision-Language Models},
  author={Li, Yifan and Du, Yifan and Zhou, Kun and Wang, Jinpeng and Zhao, Wayne Xin and Wen, Ji-Rong},
  booktitle={EMNLP}, year={2023}
}
"""


class Pope(evaluate.Metric):
    """POPE yes/no metrics over raw answers and labels."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description="predictions: list of model answers; references: list of 'yes'/'no' labels",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, mode: str = "official") -> dict:
        return pope_metrics(list(references), list(predictions), mode)
