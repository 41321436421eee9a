"""PAINT: amplify informative image tokens, damp summary tokens (arXiv 2501.12206).

Configuration, pure tensor math and the engine plug (`PAINTMethod`); no model family (the vision encoder's
hooks come from the family adapter's `paint_capture`). SPEC section 4:

* Token selection, once per image, from the vision encoder's own attention:
  - local stream: CLS -> patch attention of the first vision layer, summed over heads; top ``local_ratio``;
  - spatial stream: column mean (over heads and query rows) of the first vision layer; top ``spatial_ratio``;
  - summary tokens S: IQR outliers of CLS -> patch attention, summed over heads, at the feature layer;
  - local set L = (local ∪ spatial) \\ S.
* Amplification, pre-softmax, on the last query row of layers 2..L-1:
  ``z_j += alpha * |z_j|`` for j in L, ``z_j += beta * |z_j|`` for j in S.

Decisions where the paper or code leaves room (all documented on the functions):

* A ratio keeps ``floor(ratio * P)`` tokens (the official code's ``int(P * ratio)``: 144 and 28 of 576 for
  0.25 and 0.05), with a 1e-9 guard against float noise; ties go to the lower index.
* Quartiles use ``torch.quantile``'s linear interpolation (numpy's default percentile, which the official
  code uses). Outliers are strictly above ``Q3 + k * IQR``.
* Summary tokens: every IQR outlier (the paper's rule, ``summary_rounding="paper"``). The official code turns the
  outliers into a share ``c / n`` and keeps the top ``int(n * (c / n))`` scores, which float rounding makes ``c - 1``
  for some counts at n = 49, 100, 196, 729 (never at 576 = LLaVA-1.5's grid); ``summary_rounding="official"``
  reproduces that (the top-scored outliers are kept, the lowest-scored one dropped).
* Encoders without CLS (SigLIP, Qwen-VL ViT) use the column-mean score for both streams and for the
  summary score at the feature layer (ours).
* Merged grids (Qwen 2x2): scores are summed inside each merged token before any ranking or quartile.
"""

from .config import COLLAPSE_ALPHA, PAINTConfig, PatchOrder
from .method import PAINTMethod
from .selection import (
    TokenSelection,
    column_mean_scores,
    local_stream,
    merge_scores,
    official_summary_count,
    paint_logit_edit,
    select_from_scores,
    select_tokens,
    selection_to_columns,
    spatial_stream,
    summary_tokens,
    top_ratio,
)

__all__ = [
    "COLLAPSE_ALPHA",
    "PAINTConfig",
    "PAINTMethod",
    "select_from_scores",
    "PatchOrder",
    "TokenSelection",
    "column_mean_scores",
    "local_stream",
    "merge_scores",
    "official_summary_count",
    "paint_logit_edit",
    "select_tokens",
    "selection_to_columns",
    "spatial_stream",
    "summary_tokens",
    "top_ratio",
]
