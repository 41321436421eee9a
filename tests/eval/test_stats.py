"""Bootstrap intervals, paired tests, McNemar and Holm against direct computations on hand data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlm_attn.eval import pope, stats
from vlm_attn.eval.chair import CHAIR
from vlm_attn.eval.tables import chair_table, point_metrics, pope_table

# Three captions' CHAIR counts (columns = stats.CHAIR_COLUMNS):
# captions, hallucinated caption, mentions, hallucinated mentions, gt, covered gt, distinct mentioned, tokens
HAND = np.array([
    [1, 1, 4, 2, 3, 2, 3, 10],
    [1, 0, 2, 0, 2, 2, 2, 8],
    [1, 1, 1, 1, 4, 0, 1, 6],
])


def _chair_i(rows: list[int]) -> float:
    """CHAIR_I of a resample written out by hand: hallucinated mentions / mentions of the drawn rows."""
    mentions = sum(HAND[i][2] for i in rows)
    return sum(HAND[i][3] for i in rows) / mentions


def test_statistics_on_hand_sums():
    got = stats.chair_statistic(HAND.sum(axis=0))
    # sums: 3 captions, 2 hallucinated, 7 mentions, 3 hallucinated, 9 gt, 4 covered, 6 distinct, 24 tokens
    assert got["CHAIR_S"] == pytest.approx(2 / 3) and got["CHAIR_I"] == pytest.approx(3 / 7)
    assert got["Recall"] == pytest.approx(4 / 9) and got["Precision"] == pytest.approx(4 / 6)
    assert got["F1"] == pytest.approx(2 * (4 / 9) * (4 / 6) / (4 / 9 + 4 / 6)) and got["Len"] == 8.0
    p = stats.pope_statistic(np.array([10, 4, 1, 3, 1]))  # n, tp, fp, tn, fn (one unparsed answer)
    assert (p["accuracy"], p["precision"], p["recall"], p["yes_ratio"]) == (0.7, 0.8, 0.8, 0.5)
    assert p["f1"] == pytest.approx(0.8)
    assert stats.chair_statistic(np.zeros(8))["CHAIR_I"] == 0.0  # no mentions: 0, as the metric reports it


def test_interval_equals_direct_recomputation_with_the_seed():
    n_resamples, seed = 150, 7
    found = stats.bootstrap({"all": HAND}, stats.chair_statistic, n_resamples, seed)["all"]["CHAIR_I"]
    rng = stats.stratum_generators(seed, 1)[0]
    draws = rng.integers(0, 3, size=(n_resamples, 3))  # one block: the same draws the bootstrap made
    values = sorted(_chair_i(list(row)) for row in draws)
    # the 2.5 / 97.5 percentiles by linear interpolation between order statistics, written out
    def percentile(q: float) -> float:
        pos = q / 100 * (len(values) - 1)
        lo = math.floor(pos)
        return values[lo] + (values[min(lo + 1, len(values) - 1)] - values[lo]) * (pos - lo)

    assert found.estimate == pytest.approx(3 / 7)
    assert (found.low, found.high) == (pytest.approx(percentile(2.5)), pytest.approx(percentile(97.5)))
    again = stats.bootstrap({"all": HAND}, stats.chair_statistic, n_resamples, seed)["all"]["CHAIR_I"]
    assert again == found
    w7, w8 = (next(stats.resample_weights(3, 50, stats.stratum_generators(s, 1)[0])) for s in (7, 8))
    assert not (w7 == w8).all()


def test_blocks_continue_one_stream():
    """More resamples than one block: blocks are consecutive draws of the same generator."""
    weights = np.concatenate(list(stats.resample_weights(3, stats.BLOCK + 5, stats.stratum_generators(1, 1)[0])))
    rng = stats.stratum_generators(1, 1)[0]
    draws = np.concatenate([rng.integers(0, 3, size=(stats.BLOCK, 3)), rng.integers(0, 3, size=(5, 3))])
    assert weights.shape == (stats.BLOCK + 5, 3)
    assert (weights == np.stack([np.bincount(d, minlength=3) for d in draws])).all()


def test_two_images_enumerated():
    """Two images, one hallucinating: the resamples {00, 01, 10, 11} give CHAIR_S 1, 1/2, 1/2, 0, each with
    probability 1/4, so the 2.5% and 97.5% percentiles of many resamples are exactly 0 and 1."""
    counts = np.array([[1, 1, 1, 1, 1, 0, 1, 5], [1, 0, 1, 0, 1, 1, 1, 5]])
    found = stats.bootstrap({"all": counts}, stats.chair_statistic, 4000, 0)["all"]["CHAIR_S"]
    assert (found.estimate, found.low, found.high) == (0.5, 0.0, 1.0)


def test_average_over_strata_resamples_within_each():
    a = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 1, 0], [1, 0, 1, 0, 0]])  # n, tp, fp, tn, fn
    b = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]])
    found = stats.bootstrap({"random": a, "popular": b}, stats.pope_statistic, 300, 3, average="average")
    assert found["average"]["accuracy"].estimate == pytest.approx((2 / 3 + 1 / 2) / 2)
    ra, rb = stats.stratum_generators(3, 2)
    acc_a = [sum(a[i][1] + a[i][3] for i in row) / 3 for row in ra.integers(0, 3, size=(300, 3))]
    acc_b = [sum(b[i][1] + b[i][3] for i in row) / 2 for row in rb.integers(0, 2, size=(300, 2))]
    mean = (np.array(acc_a) + np.array(acc_b)) / 2
    assert (found["average"]["accuracy"].low, found["average"]["accuracy"].high) == \
        pytest.approx(tuple(np.percentile(mean, [2.5, 97.5])))
    assert found["random"]["accuracy"].high == pytest.approx(float(np.percentile(acc_a, 97.5)))


def test_paired_bootstrap_direct_and_identical():
    other = HAND.copy()
    other[:, 3] = [1, 0, 0]  # B hallucinates less: 1 of 7 mentions
    found = stats.paired_bootstrap({"all": HAND}, {"all": other}, stats.chair_statistic, 120, 5)["all"]["CHAIR_I"]
    rng = stats.stratum_generators(5, 1)[0]
    diffs = []
    for row in rng.integers(0, 3, size=(120, 3)):
        mentions = sum(HAND[i][2] for i in row)
        diffs.append(sum(other[i][3] for i in row) / mentions - sum(HAND[i][3] for i in row) / mentions)
    assert (found.a, found.b, found.difference) == (pytest.approx(3 / 7), pytest.approx(1 / 7), pytest.approx(-2 / 7))
    assert (found.low, found.high) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    assert found.p_value == pytest.approx(stats.bootstrap_p_value(np.array(diffs)))
    same = stats.paired_bootstrap({"all": HAND}, {"all": HAND}, stats.chair_statistic, 50, 0)["all"]["CHAIR_I"]
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_p_value_by_hand():
    assert stats.bootstrap_p_value(np.array([1.0, 2.0, 3.0])) == 0.5  # 2 * (0 + 1) / 4
    assert stats.bootstrap_p_value(np.array([-1.0, 0.0, 1.0, 2.0])) == 1.0  # 2 * 3 / 5, capped
    assert stats.bootstrap_p_value(np.array([-3.0, -2.0, -1.0, 1.0])) == 0.8  # 2 * (1 + 1) / 5


def test_mcnemar_on_a_hand_table():
    # 2x2 table of 30 questions: both right 15, A right / B wrong 3, A wrong / B right 9, both wrong 3
    a = [True] * 15 + [True] * 3 + [False] * 9 + [False] * 3
    b = [True] * 15 + [False] * 3 + [True] * 9 + [False] * 3
    exact = stats.mcnemar(a, b, "exact")
    # 2 * P(X <= 3), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66 + 220) / 4096
    assert (exact.b, exact.c, exact.test) == (3, 9, "exact") and exact.p_value == 598 / 4096
    chi2 = stats.mcnemar(a, b, "chi2")
    assert chi2.statistic == pytest.approx(25 / 12)  # (|3 - 9| - 1)^2 / 12
    assert chi2.p_value == pytest.approx(0.14891467317876161)  # chi-square(1) tail of 25/12
    assert stats.mcnemar(a, b).test == "exact"  # auto: 12 discordant pairs < 25
    big = stats.mcnemar_from_counts(20, 40)
    assert big.test == "chi2" and big.statistic == pytest.approx(361 / 60)
    assert big.p_value == pytest.approx(0.014171388254012323)
    assert stats.mcnemar_from_counts(0, 0).p_value == 1.0
    assert stats.mcnemar_from_counts(5, 5, "chi2").p_value == 1.0
    with pytest.raises(ValueError, match="one of"):
        stats.mcnemar(a, b, "fisher")


def test_holm_on_hand_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]
    assert stats.holm([]) == []


def test_chair_table_reproduces_chair_scores():
    evaluator = CHAIR(ground_truth={1: {"dog", "person"}, 2: {"toilet"}, 3: set()}, lemmatizer="offline")
    result = evaluator.score(["A man and a dog with a cat.", "A toilet and a sink.", "A bench."], [
        {"dog", "person"}, {"toilet"}, set()], image_ids=[1, 2, 3])
    table = chair_table(result.to_dict())
    assert table.ids == {"all": ("1", "2", "3")}
    got = point_metrics(table)["all"]
    assert got == pytest.approx(result.metrics)
    sums = dict(zip(stats.CHAIR_COLUMNS, table.counts["all"].sum(axis=0)))
    assert sums == {k: result.counts[k] for k in stats.CHAIR_COLUMNS}


def test_pope_table_reproduces_pope_metrics():
    records = [
        {"id": "random/1", "split": "random", "question_id": 1, "label": "yes", "output": "Yes, there is."},
        {"id": "random/2", "split": "random", "question_id": 2, "label": "no", "output": "Yes"},
        {"id": "random/3", "split": "random", "question_id": 3, "label": "no", "output": "No."},
        {"id": "random/4", "split": "random", "question_id": 4, "label": "yes", "error": "OSError: gone"},
        {"id": "popular/1", "split": "popular", "question_id": 1, "label": "yes", "output": "maybe"},
    ]
    for mode in pope.PARSE_MODES:  # each mode scores one answer at a time exactly as it scores the split
        table = pope_table(records, mode)
        assert table.ids == {"random": ("random/1", "random/2", "random/3"), "popular": ("popular/1",)}
        want = pope.pope_metrics(["yes", "no", "no"], ["Yes, there is.", "Yes", "No."], mode)
        assert point_metrics(table)["random"] == pytest.approx({m: want[m] for m in pope.METRIC_NAMES})
    assert pope_table(records, "official").correct["random"].tolist() == [True, False, True]
    assert pope_table(records, "lmms-eval").correct["random"].tolist() == [False, False, False]
