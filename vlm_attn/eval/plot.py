"""The report's figure: CHAIR recall against CHAIR_I per run, and POPE F1 per split, with interval bars.

One panel per task present: CHAIR as points at (CHAIR_I, Recall) with horizontal and vertical bars for the two
bootstrap intervals (lower-right is better: fewer hallucinations, more of the objects found); POPE as grouped bars
of F1 per split (and the average) with the interval as error bars. Each method keeps one colour in every panel.
matplotlib is imported only here, with the non-interactive Agg backend, so the rest of the package runs without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from .report import RunRecord, flatten_metrics, interval_of

SUFFIXES: tuple[str, ...] = (".png", ".pdf", ".svg")
INSTALL = "pip install matplotlib (or pip install 'vlm-attn[plot]')"


def check_plot_path(path: str | Path) -> Path:
    """The figure path, refused (UserError) when matplotlib is missing or the suffix is not an image format."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--plot {path}: the file name must end in {', '.join(SUFFIXES)} (the figure's format)")
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(f"--plot needs matplotlib, which is not installed: {INSTALL}")
    return path


def method_colours(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """Method -> colour of the tab10 cycle, in order of first appearance (the same in every panel)."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    methods = list(dict.fromkeys(r.method for r in runs))
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def _label(run: RunRecord, runs: Sequence[RunRecord]) -> str:
    """The method, with the run's name when several runs share the method."""
    return run.method if sum(r.method == run.method for r in runs) == 1 else f"{run.method} ({run.run})"


def _errors(value: float, interval: tuple[float, float] | None) -> list[list[float]]:
    """matplotlib's asymmetric error (below, above) in percent; zero without an interval."""
    if interval is None:
        return [[0.0], [0.0]]
    return [[100 * (value - interval[0])], [100 * (interval[1] - value)]]


def _chair_panel(ax: Any, runs: Sequence[RunRecord], colours: dict[str, Any]) -> None:
    for run in runs:
        x, y = run.metrics["CHAIR_I"], run.metrics["Recall"]
        ax.errorbar(100 * x, 100 * y, xerr=_errors(x, interval_of(run, "CHAIR_I")),
                    yerr=_errors(y, interval_of(run, "Recall")), fmt="o", capsize=4, markersize=7,
                    color=colours[run.method], label=_label(run, runs))
    ax.set_xlabel("CHAIR$_I$ (%)  (lower is better)")
    ax.set_ylabel("Recall (%)  (higher is better)")
    ax.set_title("CHAIR: recall against CHAIR$_I$")
    ax.grid(alpha=0.3)


def _pope_panel(ax: Any, runs: Sequence[RunRecord], colours: dict[str, Any]) -> None:
    groups = [s for s in ("random", "popular", "adversarial", "average")
              if any(f"{s}.f1" in flatten_metrics(r.metrics) for r in runs)]
    width = 0.8 / len(runs)
    for k, run in enumerate(runs):
        flat = flatten_metrics(run.metrics)
        xs, ys, lows, highs = [], [], [], []
        for g, split in enumerate(groups):
            value = flat.get(f"{split}.f1")
            if value is None:
                continue
            err = _errors(value, interval_of(run, f"{split}.f1"))
            xs.append(g - 0.4 + width * (k + 0.5))
            ys.append(100 * value)
            lows.append(err[0][0])
            highs.append(err[1][0])
        ax.bar(xs, ys, width=width * 0.9, yerr=[lows, highs], capsize=3, color=colours[run.method],
               label=_label(run, runs))
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("F1 (%)")
    ax.set_title("POPE: F1 per split")
    low = min(100 * flatten_metrics(r.metrics).get(f"{s}.f1", 1.0) for r in runs for s in groups)
    ax.set_ylim(max(0.0, low - 15), 100)
    ax.grid(axis="y", alpha=0.3)


def plot_runs(runs: Sequence[RunRecord], path: str | Path, dpi: int = 150) -> Path:
    """Draw the figure of ``runs`` (CHAIR and/or POPE; intervals from ``run.intervals`` when present) to ``path``."""
    path = check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(task, [r for r in runs if r.task == task]) for task in ("chair", "pope")]
    panels = [(task, rs) for task, rs in panels if rs]
    if not panels:
        raise UserError("--plot: no CHAIR or POPE runs to draw")
    colours = method_colours(runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (task, rs) in zip(axes[0], panels):
        (_chair_panel if task == "chair" else _pope_panel)(ax, rs, colours)
    legend: dict[str, Any] = {}  # one entry per label over both panels, below them
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 6), frameon=False,
               fontsize=9)
    levels = {r.intervals.get("level") for r in runs if r.intervals}
    if levels:
        note = ", ".join(f"{lv:.0%}" for lv in sorted(levels))
        fig.text(0.99, 0.01, f"bars: {note} bootstrap intervals", ha="right", va="bottom", fontsize=7, alpha=0.7)
    rows = -(-len(legend) // 6)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * rows, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
