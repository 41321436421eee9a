"""`vlm-attn tune`: grid parsing, the disjoint tuning split, the objectives, and a 2-point grid on toy-vlm."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from vlm_attn.cli import main, make_parser
from vlm_attn.commands.common import parse_method_args
from vlm_attn.errors import UserError
from vlm_attn.eval import tune

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_toy_coco.py"


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_toy_coco", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_toy_coco(tmp_path_factory.mktemp("toy") / "coco", n_train=4, n_val=30, seed=0)


def test_grid_flags_and_points():
    grid = tune.parse_grid_flags(["p=0.6,0.8", "sink-dims=a.json"], ["var"])
    assert grid == {("var", "p"): ["0.6", "0.8"], ("var", "sink_dims"): ["a.json"]}
    two = tune.parse_grid_flags(["var.p=1,2", "pai.alpha=3,4"], ["var", "pai"])
    assert tune.grid_points(two) == [
        {"var": {"p": "1"}, "pai": {"alpha": "3"}}, {"var": {"p": "1"}, "pai": {"alpha": "4"}},
        {"var": {"p": "2"}, "pai": {"alpha": "3"}}, {"var": {"p": "2"}, "pai": {"alpha": "4"}}]
    assert tune.point_label({"var": {"p": 0.6, "rho": 0.5}}) == "var.p=0.6 var.rho=0.5"
    for flags, methods, message in [
        (["p"], ["var"], "write SETTING=V1,V2"), (["p=1,,2"], ["var"], "an empty value"),
        (["p=1", "p=2"], ["var"], "in the grid twice"), (["p=1,1"], ["var"], "lists a value twice"),
        (["p=1"], ["var", "pai"], "write METHOD.SETTING"), (["paint.alpha=1"], ["var"], "'paint' is not selected"),
    ]:
        with pytest.raises(UserError, match=message):
            tune.parse_grid_flags(flags, methods)


def test_grid_file_json_and_yaml(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"var": {"p": [0.6, 0.8], "sink_dims": [[1, 2], [3]]}}))
    assert tune.read_grid_file(path, ["var"]) == {("var", "p"): [0.6, 0.8], ("var", "sink_dims"): [[1, 2], [3]]}
    if importlib.util.find_spec("yaml") is not None:
        (tmp_path / "g.yaml").write_text("var:\n  p: [0.6, 0.8]\n")
        assert tune.read_grid_file(tmp_path / "g.yaml", ["var"]) == {("var", "p"): [0.6, 0.8]}
    path.write_text(json.dumps({"var": {"p": 0.6}}))
    with pytest.raises(UserError, match="var.p must be a non-empty list of values, got 0.6"):
        tune.read_grid_file(path, ["var"])
    path.write_text("{")
    with pytest.raises(UserError, match="is not valid JSON"):
        tune.read_grid_file(path, ["var"])


def test_tuning_split_disjoint_or_refused():
    pool = list(range(1, 21))
    evaluation = [2, 4, 6, 8]
    split = tune.tuning_split(pool, evaluation, n=5, seed=3)
    assert len(split) == 5 and not set(split) & set(evaluation) and split == sorted(split)
    assert tune.tuning_split(pool, evaluation, n=5, seed=3) == split
    assert tune.tuning_split(pool, evaluation, listed=[1, 3]) == [1, 3]
    with pytest.raises(UserError, match=r"2 of its 3 images are in the evaluation list \(e.g. 4\)"):
        tune.tuning_split(pool, evaluation, listed=[1, 4, 8])
    with pytest.raises(UserError, match="only 16 val2014 images lie outside"):
        tune.tuning_split(pool, evaluation, n=17)


def test_objectives_choose_by_hand():
    points = [{"metrics": {"CHAIR_I": 0.10, "Recall": 0.70, "F1": 0.7}},
              {"metrics": {"CHAIR_I": 0.05, "Recall": 0.60, "F1": 0.6}},
              {"metrics": {"CHAIR_I": 0.08, "Recall": 0.72, "F1": 0.8}},
              {"metrics": {"CHAIR_I": 0.08, "Recall": 0.90, "F1": 0.8}}]
    rule = tune.objective("min_chair_i_recall_ge_baseline_ci")
    assert tune.choose(rule, points, floor=0.65) == (2, [True, False, True, True])  # tie 0.08: the earlier point
    assert tune.choose(rule, points, floor=0.95) == (None, [False] * 4)
    assert tune.choose(tune.objective("min_chair_i"), points) == (1, [True] * 4)
    assert tune.choose(tune.objective("max_f1"), points)[0] == 2
    with pytest.raises(UserError, match="--objective 'best' is not known; choose from"):
        tune.objective("best")


def _tune_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["tune", "chair", "--model", "toy-vlm", "--method", "pai", "--coco-root", str(root), "--out", str(out),
            "--lemmatizer", "offline", "--max-new-tokens", "16", "--no-progress", *extra]


def test_tune_refuses_bad_grids_and_overlap_before_the_model(toy_root, tmp_path, capsys, monkeypatch):
    import vlm_attn.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "t"
    cases = [
        (["--grid", "alhpa=0.2,0.5"], "--grid pai.alhpa: PAIConfig has no setting 'alhpa'; known: alpha"),
        (["--grid", "alpha=-1,0.5"], "PAIConfig.alpha must be"),
        (["--grid", "alpha=x"], "--grid pai.alpha: 'x' is not a number"),
        ([], "no grid: give --grid SETTING=V1,V2"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(_tune_args(toy_root, out, *extra))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1, err
    ids = json.loads((toy_root / "annotations" / "instances_val2014.json").read_text())["images"]
    listed = tmp_path / "tune.json"
    evaluation = tmp_path / "eval.json"
    listed.write_text(json.dumps([ids[0]["id"], ids[1]["id"]]))
    evaluation.write_text(json.dumps([ids[1]["id"], ids[2]["id"]]))
    with pytest.raises(SystemExit) as exc:
        main(_tune_args(toy_root, out, "--grid", "alpha=0.2,0.5", "--tune-image-list", str(listed),
                        "--eval-image-list", str(evaluation)))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert f"1 of its 2 images are in the evaluation list (e.g. {ids[1]['id']})" in err
    assert not out.exists()


def test_tune_two_points_on_toy_vlm(toy_root, tmp_path, capsys):
    out = tmp_path / "tune-pai"
    args = _tune_args(toy_root, out, "--grid", "alpha=0.2,0.8", "--tune-num-images", "4", "--eval-num-images", "10")
    assert main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "tune.json").read_text())
    tune_ids, eval_ids = record["split"]["tune"]["image_ids"], record["split"]["eval"]["image_ids"]
    assert len(tune_ids) == 4 and len(eval_ids) == 10 and not set(tune_ids) & set(eval_ids)
    assert record["grid"] == [{"method": "pai", "setting": "alpha", "values": [0.2, 0.8]}]
    assert [p["settings"] for p in record["points"]] == [{"pai": {"alpha": 0.2}}, {"pai": {"alpha": 0.8}}]
    floor = record["baseline"]["intervals"]["Recall"][0]
    assert record["baseline"]["floor"] == {"Recall": floor}
    for point in record["points"]:
        run = json.loads((out / point["run"] / "metrics.json").read_text())
        assert point["metrics"] == run["metrics"] and point["intervals"] == run["intervals"]["metrics"]
        assert [c["image_id"] for c in json.loads((out / point["run"] / "chair_details.json").read_text())[
            "captions"]] == tune_ids
        assert point["feasible"] == (point["metrics"]["Recall"] >= floor)
    feasible = [p for p in record["points"] if p["feasible"]]
    best = min(feasible, key=lambda p: p["metrics"]["CHAIR_I"])
    assert record["chosen"]["index"] == best["index"] and "chosen: pai.alpha=" in printed
    chosen = out / "chosen_config.json"
    assert json.loads(chosen.read_text()) == best["settings"]
    ns = make_parser().parse_args(["eval", "chair", "--method", "pai", "--method-config", str(chosen),
                                   "--coco-root", "x", "--out", "y"])
    assert parse_method_args(ns).configs[0].alpha == best["settings"]["pai"]["alpha"]

    sizes = {p: (out / p / "samples.rank0.jsonl").read_text() for p in ("baseline", "points/000", "points/001")}
    with pytest.raises(SystemExit, match="is not empty; pass --resume"):
        main(args)
    assert main([*args, "--resume"]) == 0  # everything finished: nothing generated again, the same choice
    assert {p: (out / p / "samples.rank0.jsonl").read_text() for p in sizes} == sizes
    again = json.loads((out / "tune.json").read_text())
    assert again["points"] == record["points"] and again["chosen"] == record["chosen"]
    with pytest.raises(SystemExit, match="started with other grid"):
        main([*_tune_args(toy_root, out, "--grid", "alpha=0.2,0.5", "--tune-num-images", "4",
                          "--eval-num-images", "10"), "--resume"])
