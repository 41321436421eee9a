"""Uncertainty and paired tests for corpus metrics that are ratios of per-sample counts (CHAIR, POPE).

Every CHAIR and POPE metric is a ratio of sums over samples (CHAIR_I = hallucinated mentions / mentions, POPE
precision = TP / (TP + FP), ...), so one table of per-sample counts (rows = images or questions, columns = counts)
is enough to recompute a metric on any resample of the rows. The functions here are pure: numbers in, numbers out.

- ``resample_weights`` draws the bootstrap: resample ``b`` of ``n`` rows is a row of multiplicities (how often each
  row was drawn), from ``rng.integers(0, n, size=n)``, drawn in blocks; each stratum (the one CHAIR table, each
  POPE split) has its own generator spawned from the seed (``stratum_generators``), so a seed fixes every resample;
- ``bootstrap`` gives the percentile interval of each metric (the 2.5 and 97.5 percentiles of the resampled values,
  numpy's linear interpolation, for a 95% level); POPE's average over splits is resampled within each split;
- ``paired_bootstrap`` resamples the rows of two runs over the same samples together and gives the difference
  B - A with its percentile interval and a two-sided p-value ``min(1, 2 * min(1 + #{d_b <= 0}, 1 + #{d_b >= 0})
  / (B + 1))`` (the level at which the percentile interval of the difference starts to exclude 0);
- ``mcnemar`` tests two paired lists of right/wrong answers: exact binomial test on the discordant pairs, or the
  chi-square statistic with continuity correction ``max(|b - c| - 1, 0)^2 / (b + c)`` on 1 degree of freedom;
- ``holm`` adjusts p-values of a family of tests (Holm 1979, step-down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
BLOCK = 200  # resamples drawn (and turned into weights) at a time: bounds memory to BLOCK x n
EXACT_BELOW = 25  # "auto" McNemar: exact binomial when fewer discordant pairs than this, else chi-square
MCNEMAR_TESTS: tuple[str, ...] = ("auto", "exact", "chi2")

# Per-sample count columns and the metrics computed from their sums.
CHAIR_COLUMNS: tuple[str, ...] = (
    "captions", "hallucinated_captions", "mentions", "hallucinated_mentions", "gt_objects", "covered_gt_objects",
    "distinct_mentioned_objects", "tokens",
)
POPE_COLUMNS: tuple[str, ...] = ("n", "tp", "fp", "tn", "fn")

Statistic = Callable[[np.ndarray], dict[str, np.ndarray]]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0.0 where den is 0 (as the metrics report a division by zero)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    return _ratio(2 * precision * recall, precision + recall)


def chair_statistic(sums: np.ndarray) -> dict[str, np.ndarray]:
    """CHAIR's metrics from summed ``CHAIR_COLUMNS`` (last axis); any leading axes are kept."""
    c = {name: sums[..., i] for i, name in enumerate(CHAIR_COLUMNS)}
    recall = _ratio(c["covered_gt_objects"], c["gt_objects"])
    precision = _ratio(c["covered_gt_objects"], c["distinct_mentioned_objects"])
    return {
        "CHAIR_S": _ratio(c["hallucinated_captions"], c["captions"]),
        "CHAIR_I": _ratio(c["hallucinated_mentions"], c["mentions"]),
        "Recall": recall,
        "Precision": precision,
        "F1": _f1(precision, recall),
        "Len": _ratio(c["tokens"], c["captions"]),
    }


def pope_statistic(sums: np.ndarray) -> dict[str, np.ndarray]:
    """POPE's metrics (yes = positive) from summed ``POPE_COLUMNS``; a prediction neither yes nor no counts in
    ``n`` only (wrong for accuracy, outside precision and recall), as in ``pope.pope_metrics``."""
    c = {name: sums[..., i] for i, name in enumerate(POPE_COLUMNS)}
    precision = _ratio(c["tp"], c["tp"] + c["fp"])
    recall = _ratio(c["tp"], c["tp"] + c["fn"])
    return {
        "accuracy": _ratio(c["tp"] + c["tn"], c["n"]),
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "yes_ratio": _ratio(c["tp"] + c["fp"], c["n"]),
    }


def resample_weights(n: int, n_resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Blocks of bootstrap resamples as multiplicity rows: block[b, i] = how often row i is in resample b.

    Resample b draws ``rng.integers(0, n, size=n)``; blocks of ``BLOCK`` resamples are drawn one after the other
    from the same generator, so a seed fixes every resample whatever consumes them.
    """
    if n < 1:
        raise ValueError("the bootstrap needs at least one sample")
    if n_resamples < 1:
        raise ValueError(f"the number of resamples must be >= 1, got {n_resamples}")
    for start in range(0, n_resamples, BLOCK):
        size = min(BLOCK, n_resamples - start)
        draws = rng.integers(0, n, size=(size, n))
        weights = np.zeros((size, n))
        np.add.at(weights, (np.repeat(np.arange(size), n), draws.ravel()), 1.0)
        yield weights


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The ``100 (1 - level) / 2`` and ``100 (1 + level) / 2`` percentiles of ``values`` (numpy's linear
    interpolation): 2.5 and 97.5 for a 95% interval."""
    if not 0 < level < 1:
        raise ValueError(f"the interval level must lie in (0, 1), got {level}")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.asarray(values, dtype=float), [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Interval:
    """A metric's value on all samples and its bootstrap interval."""

    estimate: float
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def bootstrap_values(
    counts: np.ndarray, statistic: Statistic, n_resamples: int, rng: np.random.Generator,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Each metric of ``statistic`` on every resample of the rows of ``counts`` (n x k): metric -> (n_resamples,)."""
    counts = np.asarray(counts, dtype=float)
    parts: dict[str, list[np.ndarray]] = {}
    for weights in resample_weights(len(counts), n_resamples, rng):
        for name, values in statistic(weights @ counts).items():
            parts.setdefault(name, []).append(values)
        if progress is not None:
            progress(len(weights))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def stratum_generators(seed: int, k: int) -> list[np.random.Generator]:
    """One independent generator per stratum (POPE split), spawned from ``seed``; one table gets the first."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(k)]


def _bootstrap_strata(
    tables: Mapping[str, np.ndarray], statistic: Statistic, n_resamples: int, seed: int,
    progress: Callable[[int], None] | None,
) -> dict[str, dict[str, np.ndarray]]:
    rngs = stratum_generators(seed, len(tables))
    return {name: bootstrap_values(t, statistic, n_resamples, rng, progress)
            for (name, t), rng in zip(tables.items(), rngs)}


def _mean_over(per: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Unweighted mean over strata of each metric (resample b of the mean = mean of the strata's resample b)."""
    values = list(per.values())
    return {m: sum(v[m] for v in values) / len(values) for m in values[0]}


def bootstrap(
    tables: Mapping[str, np.ndarray], statistic: Statistic, n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL, average: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Interval]]:
    """Stratum -> metric -> value on all rows and percentile bootstrap interval.

    Each table (n_i x k counts; CHAIR: one table of images, POPE: one per split) is resampled on its own, with its
    own generator from ``stratum_generators(seed, len(tables))``. With ``average`` (e.g. "average") the unweighted
    mean over the strata gets an entry of that name too, its interval from the means of the resampled values.
    """
    tables = {name: np.asarray(t, dtype=float) for name, t in tables.items()}
    values = _bootstrap_strata(tables, statistic, n_resamples, seed, progress)
    points = {name: {m: float(v) for m, v in statistic(t.sum(axis=0)).items()} for name, t in tables.items()}
    if average is not None:
        values[average] = _mean_over(values)
        points[average] = {m: float(v) for m, v in _mean_over(
            {n: {m: np.asarray(x) for m, x in p.items()} for n, p in points.items()}).items()}
    return {name: {m: Interval(points[name][m], *percentile_interval(values[name][m], level)) for m in points[name]}
            for name in values}


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from bootstrap differences (see the module docstring)."""
    d = np.asarray(differences, dtype=float)
    below, above = int(np.sum(d <= 0)), int(np.sum(d >= 0))
    return min(1.0, 2 * min(below + 1, above + 1) / (len(d) + 1))


@dataclass(frozen=True)
class Difference:
    """B - A for one metric: both values, the observed difference, its paired bootstrap interval and p-value."""

    a: float
    b: float
    difference: float
    low: float
    high: float
    p_value: float


def paired_bootstrap(
    tables_a: Mapping[str, np.ndarray], tables_b: Mapping[str, np.ndarray], statistic: Statistic,
    n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
    average: str | None = None, progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Difference]]:
    """Stratum -> metric -> B - A with a paired bootstrap: row i of A's and B's table is the same sample, and every
    resample takes the same rows from both (strata and ``average`` as in ``bootstrap``)."""
    if list(tables_a) != list(tables_b):
        raise ValueError(f"paired runs must have the same strata, got {list(tables_a)} and {list(tables_b)}")
    both: dict[str, np.ndarray] = {}
    for name in tables_a:
        a, b = np.asarray(tables_a[name], dtype=float), np.asarray(tables_b[name], dtype=float)
        if a.shape != b.shape:
            raise ValueError(f"{name}: paired tables must have the same shape, got {a.shape} and {b.shape}")
        both[name] = np.concatenate([a, b], axis=1)
    k = next(iter(both.values())).shape[1] // 2

    def pair(sums: np.ndarray) -> dict[str, np.ndarray]:
        ma, mb = statistic(sums[..., :k]), statistic(sums[..., k:])
        return {**{f"a:{m}": v for m, v in ma.items()}, **{f"b:{m}": v for m, v in mb.items()}}

    values = _bootstrap_strata(both, pair, n_resamples, seed, progress)
    points = {name: {m: np.asarray(v) for m, v in pair(t.sum(axis=0)).items()} for name, t in both.items()}
    if average is not None:
        values[average] = _mean_over(values)
        points[average] = _mean_over(points)
    out: dict[str, dict[str, Difference]] = {}
    for name, vals in values.items():
        metrics = [m[2:] for m in vals if m.startswith("a:")]
        out[name] = {}
        for m in metrics:
            d = vals[f"b:{m}"] - vals[f"a:{m}"]
            pa, pb = float(points[name][f"a:{m}"]), float(points[name][f"b:{m}"])
            out[name][m] = Difference(pa, pb, pb - pa, *percentile_interval(d, level), bootstrap_p_value(d))
    return out


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired right/wrong answers: ``b`` = A right and B wrong, ``c`` = A wrong and B right."""

    b: int
    c: int
    statistic: float | None
    p_value: float
    test: str  # "exact" (binomial) or "chi2" (continuity-corrected)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact p-value: ``min(1, 2 * P(X <= min(b, c)))`` for X ~ Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar_chi2(b: int, c: int) -> tuple[float, float]:
    """(statistic, p-value) of the continuity-corrected chi-square test with 1 degree of freedom."""
    n = b + c
    if n == 0:
        return 0.0, 1.0
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    return stat, math.erfc(math.sqrt(stat / 2))


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray,
            test: str = "auto") -> McNemar:
    """McNemar's test of "A and B are right equally often" on the same questions.

    ``test``: "exact", "chi2", or "auto" (exact when b + c < ``EXACT_BELOW``, where the chi-square approximation is
    poor; chi-square otherwise).
    """
    if test not in MCNEMAR_TESTS:
        raise ValueError(f"McNemar test must be one of {MCNEMAR_TESTS}, not {test!r}")
    ra, rb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if ra.shape != rb.shape:
        raise ValueError(f"paired answers must have the same length, got {ra.shape} and {rb.shape}")
    b, c = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
    return mcnemar_from_counts(b, c, test)


def mcnemar_from_counts(b: int, c: int, test: str = "auto") -> McNemar:
    """McNemar's test from the discordant counts (see ``mcnemar``)."""
    if test == "auto":
        test = "exact" if b + c < EXACT_BELOW else "chi2"
    if test == "exact":
        return McNemar(b, c, None, mcnemar_exact_p(b, c), "exact")
    if test == "chi2":
        stat, p = mcnemar_chi2(b, c)
        return McNemar(b, c, stat, p, "chi2")
    raise ValueError(f"McNemar test must be one of {MCNEMAR_TESTS}, not {test!r}")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: sorted ascending, p_(i) * (m - i + 1) (i from 1), made
    non-decreasing and capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


