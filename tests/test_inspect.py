"""`vlm_attn.inspect_attention` and `vlm-attn inspect --method var` (issue 6 item 6) on tiny models.

Random weights have no massive activations: VAR runs with explicit sink dims and a low tau (SPEC §1) so that text
and visual sinks exist, p = 1 and rho = 0 so that every image-heavy head is redistributed.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import vlm_attn
from vlm_attn.cli import main
from vlm_attn.inspection import default_layers
from vlm_attn.methods.var import sink_scores
from vlm_attn.patches import get_adapter
from vlm_attn.prompting import build_inputs
from vlm_attn.viz import Panel, render_rows

FAMILIES = ["llava", "qwen2_5_vl"]
PROMPT = "what color is the car?"
DIMS = tuple(range(8))
TAU = 2.0
LAYERS = (2, 3)  # tiny models have 4 decoder layers; VAR's default scope is 2..3


def var(p: float = 1.0) -> vlm_attn.VARConfig:
    return vlm_attn.VARConfig(sink_dims=DIMS, tau=TAU, p=p, rho=0.0)


def unpatched_reference(model, proc, image):
    """Eager attention and hidden states of the unpatched model over the same prompt."""
    batch = build_inputs(proc, [image], [PROMPT])
    previous = model.config.text_config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**batch, output_attentions=True, output_hidden_states=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    image_mask = get_adapter(model).image_mask(batch["input_ids"], dict(batch))[0]
    return out, image_mask


@pytest.mark.parametrize("family", FAMILIES)
def test_var_maps_before_after_and_sinks(load, family, image):
    model, proc = load(family)
    look = vlm_attn.inspect_attention(model, proc, image, PROMPT, var(), layers=LAYERS)
    assert not model._forward_pre_hooks and model.config.text_config._attn_implementation == "sdpa"  # removed
    assert [x.layer for x in look.layers] == list(LAYERS) and look.methods == ("var",)
    out, image_mask = unpatched_reference(model, proc, image)
    gh, gw = look.grid.shape
    assert gh * gw == int(image_mask.sum())  # these families' grids cover every image token
    for item in look.layers:
        # "before" is the unpatched model's last row at that layer (eager output_attentions, head mean).
        ref = out.attentions[item.layer][0, :, -1].mean(0)[image_mask]
        torch.testing.assert_close(item.before, ref.reshape(gh, gw), atol=1e-5, rtol=1e-5)
        assert abs(item.before_mass - float(ref.sum())) < 1e-5
        assert abs(float(item.before.sum()) - item.before_mass) < 1e-5
        assert abs(float(item.after.sum()) - item.after_mass) < 1e-5
        # Sink cells: the visual tokens whose hidden state entering the layer passes tau (image tokens' states do
        # not depend on VAR's edits, which touch text rows after the image only).
        sinks = sink_scores(out.hidden_states[item.layer], DIMS)[0] > TAU
        visual = sinks[image_mask].nonzero().flatten().tolist()
        assert item.sinks_known and item.visual_sinks_off_grid == 0
        assert item.sink_cells == tuple((k // gw, k % gw) for k in visual)
        assert all(0 <= r < gh and 0 <= c < gw for r, c in item.sink_cells)
    first = look.layer(2)  # the first layer VAR edits: same upstream states, so the change is VAR's alone
    assert first.sink_cells and first.changed
    assert first.after_mass > first.before_mass  # text sinks' mass moved onto the image
    for r, c in first.sink_cells:  # p = 1: sinks lose their weight in the redistributed heads
        assert first.after[r, c] <= first.before[r, c] + 1e-7
    assert look.layer(3).changed


@pytest.mark.parametrize("family", FAMILIES)
def test_p_zero_changes_nothing(load, family, image):
    model, proc = load(family)
    look = vlm_attn.inspect_attention(model, proc, image, PROMPT, var(p=0.0), layers=LAYERS)
    for item in look.layers:
        assert torch.equal(item.before, item.after) and not item.changed
        assert item.before_mass == item.after_mass
        assert not item.sinks_known and item.sink_cells == ()  # VAR with p = 0 does not look for sinks


def test_existing_handle_and_errors(load, image):
    model, proc = load("llava")
    fresh = vlm_attn.inspect_attention(model, proc, image, PROMPT, var(), layers=[3, 2, 3])
    assert [x.layer for x in fresh.layers] == [2, 3]  # sorted, de-duplicated
    with vlm_attn.apply(model, var()) as handle:
        methods = list(handle.engine.methods)
        applied = vlm_attn.inspect_attention(model, proc, image, PROMPT, layers=LAYERS)
        assert handle.active and handle.engine.methods == methods  # the capture left the engine as it was
        with pytest.raises(RuntimeError, match="already applied"):
            vlm_attn.inspect_attention(model, proc, image, PROMPT, var())
    for a, b in zip(fresh.layers, applied.layers):
        assert torch.equal(a.before, b.before) and torch.equal(a.after, b.after) and a.sink_cells == b.sink_cells
    with pytest.raises(RuntimeError, match="nothing to inspect"):
        vlm_attn.inspect_attention(model, proc, image, PROMPT)
    with pytest.raises(ValueError, match=r"layers \[4\] out of range"):
        vlm_attn.inspect_attention(model, proc, image, PROMPT, var(), layers=[2, 4])
    with pytest.raises(KeyError, match="inspected layers"):
        fresh.layer(0)
    assert not model._forward_pre_hooks


def test_render_grows_with_layers(load, image):
    model, proc = load("qwen2_5_vl")
    one = vlm_attn.inspect_attention(model, proc, image, PROMPT, var(), layers=[2]).render()
    two = vlm_attn.inspect_attention(model, proc, image, PROMPT, var(), layers=[2, 3]).render()
    assert one.width == two.width >= 2 * 256 and two.height > one.height
    data = json.loads(json.dumps(vlm_attn.inspect_attention(model, proc, image, PROMPT, var(), [2]).to_dict()))
    assert data["layers"][0]["layer"] == 2 and len(data["layers"][0]["before"]) == one_grid_rows(model, proc, image)


def one_grid_rows(model, proc, image) -> int:
    return get_adapter(model).image_grid(build_inputs(proc, [image], [PROMPT])).shape[0]


def test_default_layers_and_shared_colour_scale(image):
    assert default_layers(4) == (2, 3) and default_layers(2) == (0, 1)
    assert default_layers(32) == (2, 12, 21, 31)
    grid = torch.tensor([[0.0, 0.5]])
    own = Panel(image, grid).draw()
    shared = Panel(image, grid, value_range=(0.0, 1.0)).draw()
    assert own.getpixel((image.width - 1, 0)) != shared.getpixel((image.width - 1, 0))  # 0.5 is not the top
    figure = render_rows([[Panel(image), Panel(image)], [Panel(image)]], gap=2)
    assert figure.width == 2 * image.width + 2 and figure.height > 2 * image.height


def test_cli_inspect_var_png(tiny_cache, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("VLM_ATTN_CACHE", str(tiny_cache.parent / "cli_cache"))
    flags = ["--model", "tiny-llava", "--method", "var", "--sink-dims", "0,1,2,3,4,5,6,7", "--tau", "2",
             "--p", "1", "--rho", "0", "--prompt", PROMPT]
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert main(["inspect", *flags, "--layers", "2", "--out", str(one)]) == 0
    assert "layer 2: image mass" in capsys.readouterr().out
    assert main(["inspect", *flags, "--layers", "2,3", "--out", str(two), "--answer", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "answer (var):" in out and "layer 3: image mass" in out and "visual sink(s) on the grid" in out
    assert 0 < one.stat().st_size < two.stat().st_size
    with Image.open(one) as a, Image.open(two) as b:
        assert a.format == b.format == "PNG" and b.height > a.height and a.width == b.width
    assert main(["inspect", *flags, "--layers", "2", "--json", "--out", str(one)]) == 0
    data = json.loads(capsys.readouterr().out.split("\nwrote ")[0])
    assert data["method"] == "var" and data["layers"][0]["sinks_known"]
    with pytest.raises(SystemExit, match="--layers takes"):
        main(["inspect", *flags, "--layers", "two", "--out", str(one)])
    with pytest.raises(SystemExit, match="out of range"):
        main(["inspect", *flags, "--layers", "9", "--out", str(one)])


def test_maps_cover_the_seen_region_and_rows_carry_the_change(load, image):
    """Tiny LLaVA on the 80 x 60 image: shortest edge 60 -> 48, 64 wide, crop 8 view px = x 10..70 of the photo.

    The panels (image enlarged to 256 wide, x 3.2) lay the maps over x 32..224; a third panel shows the change.
    """
    model, proc = load("llava")
    look = vlm_attn.inspect_attention(model, proc, image, PROMPT, var(), layers=[2])
    assert look.region == (10.0, 0.0, 70.0, 60.0) and look.to_dict()["region"] == [10.0, 0.0, 70.0, 60.0]
    (before, after, change), = look.panel_rows()
    assert before.region == after.region == change.region == pytest.approx((32.0, 0.0, 224.0, 192.0))
    torch.testing.assert_close(torch.as_tensor(change.grid_map), look.layers[0].after - look.layers[0].before)
    moved = float(look.layers[0].change.abs().max())
    assert moved > 0 and change.value_range == pytest.approx((-moved, moved))
    pixels = before.picture()
    shown = image.resize(pixels.size, Image.Resampling.BICUBIC)
    outside = (5, 100)  # x 5 < 32: not seen, so only greyed
    assert pixels.getpixel(outside) == tuple(round(0.5 * v + 64) for v in shown.getpixel(outside))
