"""Tuning a method's settings without fooling oneself: a grid, a split disjoint from the evaluation, a named rule.

``vlm-attn tune`` (``commands/tune.py``) runs every grid point as an ordinary CHAIR run on a *tuning split* of
COCO val2014 images that shares no image with the evaluation list, then picks one point by a named objective and
writes its settings as a ``--method-config`` file. This module holds the model-free parts:

- ``parse_grid_flags`` / ``read_grid_file``: ``--grid key=v1,v2`` flags or a JSON/YAML file
  ``{"var": {"p": [0.6, 0.8]}}`` into ``{(method, setting): [raw values]}`` (validated against the config classes by
  the command, since eval does not import the methods);
- ``grid_points``: the cartesian product in the order given;
- ``tuning_split``: the tuning images (a user's list, refused when it overlaps the evaluation list, or a seeded
  sample of val2014 minus the evaluation list);
- ``OBJECTIVES`` and ``choose``: the selection rules. ``min_chair_i_recall_ge_baseline_ci`` minimises CHAIR_I among
  the points whose Recall is at least the lower end of the baseline's (no method, same split) bootstrap interval of
  Recall; the simple ones minimise or maximise one metric. Ties go to the earlier grid point.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserError
from .coco import sample_image_ids

GridKey = tuple[str, str]  # (method name, setting)


def parse_grid_flags(flags: Sequence[str], methods: Sequence[str]) -> dict[GridKey, list[str]]:
    """``["p=0.6,0.8", "var.rho=0.5,0.9"]`` -> ``{("var", "p"): ["0.6", "0.8"], ...}``.

    A bare setting name belongs to the one selected method (with several methods write ``method.setting``);
    ``-`` and ``_`` are the same in setting names. Values stay text (the command parses them with the setting's
    own rule).
    """
    grid: dict[GridKey, list[str]] = {}
    for flag in flags:
        key, sep, values = flag.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"--grid {flag!r}: write SETTING=V1,V2 (e.g. --grid p=0.6,0.8 or --grid var.rho=0.5,0.9)")
        method, setting = _key(key.strip(), methods, f"--grid {flag!r}")
        items = [v.strip() for v in values.split(",")]
        if any(not v for v in items):
            raise UserError(f"--grid {flag!r}: an empty value; separate values with single commas")
        _add(grid, (method, setting), items, f"--grid {flag!r}")
    return grid


def _key(key: str, methods: Sequence[str], where: str) -> GridKey:
    if "." in key:
        method, setting = key.split(".", 1)
        method = method.lower()
        if method not in methods:
            raise UserError(f"{where}: method {method!r} is not selected; add --method {method} or fix the name "
                            f"(selected: {', '.join(methods) or 'none'})")
    else:
        if len(methods) != 1:
            raise UserError(f"{where}: with {len(methods)} methods selected write METHOD.SETTING (e.g. "
                            f"{(methods or ['var'])[0]}.{key})")
        method, setting = methods[0], key
    return method, setting.replace("-", "_")


def _add(grid: dict[GridKey, list[Any]], key: GridKey, values: list[Any], where: str) -> None:
    if key in grid:
        raise UserError(f"{where}: {key[0]}.{key[1]} is in the grid twice; give each setting once")
    if len(set(map(json.dumps, values))) != len(values):
        raise UserError(f"{where}: {key[0]}.{key[1]} lists a value twice; give each value once")
    grid[key] = values


def read_grid_file(path: str | Path, methods: Sequence[str]) -> dict[GridKey, list[Any]]:
    """A grid file: JSON (or YAML for .yaml/.yml) ``{method: {setting: [values]}}``; values are JSON values."""
    path = Path(path)
    where = f"--grid-file {path}"
    if not path.is_file():
        raise UserError(f"{where} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"{where}: reading YAML needs PyYAML (pip install pyyaml), or write the grid as "
                            "JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    shape = 'an object {"var": {"p": [0.6, 0.8]}}'
    if not isinstance(data, Mapping) or not data:
        raise UserError(f"{where} must hold {shape}")
    grid: dict[GridKey, list[Any]] = {}
    for method, settings in data.items():
        if not isinstance(settings, Mapping) or not settings:
            raise UserError(f"{where}: the entry of {method!r} must be {shape}")
        for setting, values in settings.items():
            key = _key(f"{method}.{setting}", methods, where)
            if not isinstance(values, list) or not values:
                raise UserError(f"{where}: {method}.{setting} must be a non-empty list of values, got {values!r}")
            _add(grid, key, list(values), where)
    return grid


def grid_points(grid: Mapping[GridKey, Sequence[Any]]) -> list[dict[str, dict[str, Any]]]:
    """Every combination, the last key varying fastest: ``[{method: {setting: value}}, ...]``."""
    keys = list(grid)
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point: dict[str, dict[str, Any]] = {}
        for (method, setting), value in zip(keys, values):
            point.setdefault(method, {})[setting] = value
        points.append(point)
    return points


def point_label(point: Mapping[str, Mapping[str, Any]]) -> str:
    """``var.p=0.6 var.rho=0.5``."""
    return " ".join(f"{m}.{s}={json.dumps(v)}" for m, settings in point.items() for s, v in settings.items())


def tuning_split(
    pool: Sequence[int], evaluation: Sequence[int], listed: Sequence[int] | None = None, n: int = 100,
    seed: int = 0, listed_name: str = "--tune-image-list",
) -> list[int]:
    """The tuning images: ``listed`` when it shares no image with ``evaluation`` (else UserError), otherwise ``n``
    images sampled with ``seed`` (``coco.sample_image_ids``) from ``pool`` minus the evaluation images."""
    held_out = set(evaluation)
    if listed is not None:
        overlap = sorted(set(listed) & held_out)
        if overlap:
            raise UserError(f"{listed_name}: {len(overlap)} of its {len(listed)} images are in the evaluation list "
                            f"(e.g. {overlap[0]}); tuning on evaluation images overstates the result: remove them, "
                            "or sample a disjoint split with --tune-num-images")
        return list(listed)
    if n < 1:
        raise UserError(f"--tune-num-images must be >= 1, got {n}")
    free = sorted(set(pool) - held_out)
    if n > len(free):
        raise UserError(f"--tune-num-images {n}: only {len(free)} val2014 images lie outside the evaluation list "
                        f"({len(held_out)} images); ask for fewer")
    return sample_image_ids(free, n, seed)


@dataclass(frozen=True)
class Objective:
    """A selection rule: optimise ``metric`` (``minimise`` or not), optionally only among the points whose
    ``floor_metric`` is at least the lower end of the baseline's interval of it."""

    name: str
    metric: str
    minimise: bool
    floor_metric: str | None
    description: str

    @property
    def needs_baseline(self) -> bool:
        return self.floor_metric is not None


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("min_chair_i_recall_ge_baseline_ci", "CHAIR_I", True, "Recall",
              "minimise CHAIR_I among the points whose Recall >= the lower end of the baseline's Recall interval"),
    Objective("min_chair_s_recall_ge_baseline_ci", "CHAIR_S", True, "Recall",
              "minimise CHAIR_S among the points whose Recall >= the lower end of the baseline's Recall interval"),
    Objective("min_chair_i", "CHAIR_I", True, None, "minimise CHAIR_I"),
    Objective("min_chair_s", "CHAIR_S", True, None, "minimise CHAIR_S"),
    Objective("max_f1", "F1", False, None, "maximise the F1 of recall and precision"),
    Objective("max_recall", "Recall", False, None, "maximise Recall"),
)}


def objective(name: str) -> Objective:
    """The named objective, or UserError listing them."""
    if name not in OBJECTIVES:
        raise UserError(f"--objective {name!r} is not known; choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def choose(rule: Objective, points: Sequence[Mapping[str, Any]], floor: float | None = None
           ) -> tuple[int | None, list[bool]]:
    """(index of the chosen point or None when no point is feasible, feasibility of each point).

    ``points`` carry ``metrics`` (a CHAIR metrics dict); ``floor`` is the baseline's lower bound of
    ``rule.floor_metric`` (required when the rule has one).
    """
    if rule.needs_baseline and floor is None:
        raise ValueError(f"objective {rule.name} needs the baseline's lower bound of {rule.floor_metric}")
    feasible = [floor is None or p["metrics"][rule.floor_metric] >= floor for p in points]
    best: int | None = None
    for i, p in enumerate(points):
        if not feasible[i]:
            continue
        value = p["metrics"][rule.metric]
        if best is None or (value < points[best]["metrics"][rule.metric] if rule.minimise
                            else value > points[best]["metrics"][rule.metric]):
            best = i
    return best, feasible
