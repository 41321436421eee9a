"""CHAIR (Rohrbach et al. 2018, OPERA/PAI variant) as an ``evaluate`` metric.

Inputs: ``predictions`` = generated captions, ``references`` = the ground-truth COCO categories of each
caption's image (build them with ``vlm_attn.eval.chair.CHAIR.from_coco(...).ground_truth``). Keyword
``lemmatizer`` = "auto" | "nltk" | "offline". Output: CHAIR_S, CHAIR_I, Recall, Precision, F1, Len (fractions
in [0, 1], Len in tokens) and ``lemmatizer``, the path that ran.
"""

import datasets
import evaluate

from vlm_attn.eval.chair import CHAIR

_CITATION = """\
@inproceedings{rohrbach2018object,
  title={Object Hallucination in Image Captioning},
  author={Rohrbach, Anna and Hendricks, Lisa Anne and Burns, Kaylee and Darrell, Trevor and Saenko, Kate},
  booktitle={EMNLP}, year={2018}
}
"""


class Chair(evaluate.Metric):
    """CHAIR over captions and per-caption ground-truth category lists."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description="predictions: list of captions; references: list of lists of COCO categories",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, lemmatizer: str = "auto") -> dict:
        result = CHAIR(lemmatizer=lemmatizer).score(list(predictions), [set(r) for r in references])
        return {**result.metrics, "lemmatizer": result.lemmatizer}
