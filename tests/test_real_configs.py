"""Real checkpoints' configs, tokenizers and processors at reduced depth and width (issue 11, section 3).

Each folder of shared/real_configs (LLaVA-1.5-7B, SmolVLM-256M = idefics3, Qwen2.5-VL-3B) becomes a model of the
real architecture with random weights: the real config.json with few, narrow layers but the real token ids, vocab,
patch / merge sizes and image sizes, saved with `save_pretrained` beside the real processor and tokenizer files
and loaded through `vlm_attn.loading.load_model(<dir>)`, the path a user takes. Without torchvision (this build) the
Qwen processor is the image-only one. Image-token counts are the real processor's (576 for LLaVA-1.5 on any photo).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from types import SimpleNamespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import vlm_attn
from vlm_attn.cli import main
from vlm_attn.loading import load_model
from vlm_attn.prompting import build_inputs
from vlm_attn.testing.tiny import _redraw

from .conftest import make_image

FOLDERS = ["llava-hf__llava-1.5-7b-hf", "HuggingFaceTB__SmolVLM-256M-Instruct", "Qwen__Qwen2.5-VL-3B-Instruct"]
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, head_dim=16)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
# Photo sizes (w, h): landscape and portrait, as COCO photos are.
PHOTOS = [(640, 480), (300, 500)]
PROMPTS = ["Please describe this image in detail.", "Is there a dog?"]
NEW = 3
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
QWEN = "Qwen__Qwen2.5-VL-3B-Instruct"
# Random weights have no massive activations: explicit sink dims and a low threshold (as the tiny demos do).
METHODS = {
    "var": lambda: vlm_attn.VARConfig(sink_dims=tuple(range(8)), tau=2.0, p=1.0, rho=0.0),
    "pai": lambda: vlm_attn.PAIConfig(alpha=3.0),
    "paint": lambda: vlm_attn.PAINTConfig(alpha=3.0, beta=2.0),
}
VAR_FLAGS = ["--sink-dims", ",".join(map(str, range(8))), "--tau", "2", "--p", "1", "--rho", "0"]


def reduce_config(config: Any) -> Any:
    """The real config with narrow, shallow towers; token ids, vocab, patch/merge and image sizes untouched."""
    text, vision = config.text_config, config.vision_config
    for key, value in TEXT.items():
        setattr(text, key, value)
    text.num_key_value_heads = 2 if text.num_key_value_heads != text.num_attention_heads else 4
    if getattr(text, "layer_types", None):
        text.layer_types = text.layer_types[: TEXT["num_hidden_layers"]]
    if config.model_type == "qwen2_5_vl":
        # M-RoPE splits head_dim / 2 = 8 frequency pairs over (t, h, w) as the real [16, 24, 24] splits 64.
        text.rope_parameters = {**text.rope_parameters, "mrope_section": [2, 3, 3]}
        vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads = 2, 32, 64, 4
        vision.out_hidden_size = TEXT["hidden_size"]
        vision.fullatt_block_indexes = [1]  # the real tower alternates windowed and full blocks
    else:
        for key, value in VISION.items():
            setattr(vision, key, value)
        if hasattr(vision, "projection_dim"):
            vision.projection_dim = VISION["hidden_size"]
    return config


def build_real(folder: Path, out: Path) -> Path:
    """Reduced random-weight model of `folder` saved into `out`, next to the folder's own processor files."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlm_attn.patches.base import get_adapter

    config = reduce_config(AutoConfig.from_pretrained(folder))
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).eval()
    _redraw(model, get_adapter(model).language_model(), 0.15, 0.1, seed=0)
    model.save_pretrained(out)
    for path in folder.iterdir():
        if path.name not in ("config.json", "MODEL_CARD.md"):
            # the real tokenizer, processor configs, chat template and generation config
            shutil.copy(path, out / path.name)
    return out


@dataclass
class Real:
    name: str
    path: Path
    model: Any
    processor: Any
    photos: list[Any]
    load_log: str

    def counts(self, batch: Any) -> list[int]:
        """Image tokens per sample as the processor wrote them."""
        return [int(n) for n in (batch["input_ids"] == self.processor.image_token_id).sum(1)]


@pytest.fixture(scope="module", params=FOLDERS)
def real(request: pytest.FixtureRequest, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Real:
    folder = shared_dir / "real_configs" / request.param
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    path = build_real(folder, tmp_path_factory.mktemp(request.param))
    handler = _Capture()
    logging.getLogger("vlm_attn").addHandler(handler)
    try:
        model, processor = load_model(str(path))
    finally:
        logging.getLogger("vlm_attn").removeHandler(handler)
    photos = [make_image(i, size=size) for i, size in enumerate(PHOTOS)]
    return Real(request.param, path, model, processor, photos, "\n".join(handler.messages))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _gen(model: Any, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=NEW, do_sample=False)[:, -NEW:]


def test_loads_with_the_real_processor(real: Real):
    """load_model(<dir>) gives the checkpoint's processor class; its image-token counts are the real ones."""
    proc, model = real.processor, real.model
    batch = build_inputs(proc, real.photos, PROMPTS)
    counts = real.counts(batch)
    assert proc.image_token_id == vlm_attn.patches.get_adapter(model).image_token_ids()[0]
    if real.name.startswith("llava"):
        assert type(proc).__name__ == "LlavaProcessor" and counts == [576, 576]
    elif real.name.startswith("HuggingFaceTB"):
        # SmolVLM-256M is idefics3 with an Idefics3Processor, which owns no video processor (loads as is).
        assert model.config.model_type == "idefics3" and type(proc).__name__ == "Idefics3Processor"
        assert proc.image_seq_len == 64 and all(n % 64 == 0 for n in counts) and real.load_log == ""
    else:
        # The real tokenizer has no `image_token`; without torchvision the processor is the image-only one.
        assert type(proc).__name__ == "Qwen2_5_VLProcessor" and proc.image_token == "<|image_pad|>"
        assert not hasattr(proc.tokenizer, "image_token")
        if not HAS_TORCHVISION:
            assert proc.video_processor is None
            assert "without its video processor" in real.load_log and "torchvision" in real.load_log
        thw = batch["image_grid_thw"].tolist()
        assert counts == [t * h * w // 4 for t, h, w in thw] and counts[0] != counts[1]
        assert set(batch) >= {"mm_token_type_ids", "image_grid_thw"}
        assert torch.equal(batch["mm_token_type_ids"] > 0, batch["input_ids"] == proc.image_token_id)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_attention_method_applies_and_generates(real: Real, method: str):
    """apply + generate per method; the report counts the processor's image tokens and shows the method acting;
    a left-padded batch of two photos of different sizes gives each sample its own tokens."""
    proc, model = real.processor, real.model
    batch = build_inputs(proc, real.photos, PROMPTS)
    with vlm_attn.apply(model, METHODS[method]()) as handle:
        with torch.no_grad():
            out = handle.generate(**batch, max_new_tokens=NEW, do_sample=False)[:, -NEW:]
            report = handle.report()
            for i in range(2):
                alone = build_inputs(proc, [real.photos[i]], [PROMPTS[i]])
                assert torch.equal(out[i], handle.generate(**alone, max_new_tokens=NEW, do_sample=False)[0, -NEW:])
    assert report["image_tokens"] == real.counts(batch)
    data = report[method]
    assert data["active"]
    if method == "var":
        assert data["total_heads_redistributed"] > 0 and sum(data["visual_sinks"].values()) > 0
    else:
        assert sum(data["rows_amplified"].values()) > 0
    if method == "paint":  # one selection per encoded view (SmolVLM: every tile and the global view)
        views = 2 * (1 + 12) if real.name.startswith("HuggingFaceTB") else 2
        assert data["images"] == views and 0 < data["local_tokens"] < sum(report["image_tokens"])


@pytest.mark.parametrize("method", ["funnel", "vicrop"])
def test_input_methods_through_generate(real: Real, method: str):
    """Funnel and ViCrop through `vlm_attn.generate`: boxes inside the photo, the answer turn's image tokens are
    what the processor writes for the original plus the crops."""
    config = vlm_attn.FunnelConfig() if method == "funnel" else vlm_attn.ViCropConfig()
    photo = real.photos[0]
    result = vlm_attn.generate(real.model, real.processor, photo, "What colour is the car?", methods=[config],
                               vqa=True, max_new_tokens=NEW)
    assert len(result.images) == (4 if method == "funnel" else 2)
    for left, top, right, bottom in result.boxes:
        assert 0 <= left < right <= photo.width and 0 <= top < bottom <= photo.height
    n = len(result.images)
    sent = build_inputs(real.processor, result.images, ["What colour is the car?"], images_per_prompt=n)
    assert result.image_tokens == sum(real.counts(sent))
    if real.name.startswith("llava"):
        assert result.image_tokens == 576 * len(result.images)


def test_cli_generate_and_inspect(real: Real, tmp_path: Path, capsys: pytest.CaptureFixture):
    """`vlm-attn generate` and `inspect` with `--model <dir>`: the report's image tokens are the processor's."""
    image = tmp_path / "photo.png"
    real.photos[0].save(image)
    expected = real.counts(build_inputs(real.processor, [real.photos[0]], ["Describe the image."]))
    assert main(["generate", "--model", str(real.path), "--image", str(image), "--prompt", "Describe the image.",
                 "--method", "var", *VAR_FLAGS, "--max-new-tokens", str(NEW), "--no-vanilla", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("== report ==")[1])
    assert report["image_tokens"] == expected and report["var"]["total_heads_redistributed"] > 0
    figure = tmp_path / "look.png"
    assert main(["inspect", "--model", str(real.path), "--image", str(image), "--prompt", "Where is the car?",
                 "--method", "var", *VAR_FLAGS, "--out", str(figure), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.rsplit("wrote", 1)[0])
    gh, gw = summary["grid"]
    per_view = 64 if real.name.startswith("HuggingFaceTB") else expected[0]  # SmolVLM: the global view's grid
    assert gh * gw == per_view and figure.is_file()


def test_pipeline_helper(real: Real):
    """`steered_pipeline(<dir>, ...)` loads through load_model and answers as the steered model's generate."""
    from vlm_attn.pipelines import steered_pipeline

    photo, prompt = real.photos[1], "Describe the image."
    pipe = steered_pipeline(str(real.path), METHODS["var"]())
    try:
        messages = [{"role": "user", "content": [{"type": "image", "image": photo}, {"type": "text", "text": prompt}]}]
        text = pipe(text=messages, max_new_tokens=NEW, do_sample=False, return_full_text=False)[0]["generated_text"]
        report = pipe.vlm_attn_handle.report()
        batch = build_inputs(pipe.processor, [photo], [prompt])
        with torch.no_grad():
            out = pipe.model.generate(**batch, max_new_tokens=NEW, do_sample=False)
    finally:
        pipe.vlm_attn_handle.remove()
    assert text.strip() == pipe.processor.batch_decode(out[:, -NEW:], skip_special_tokens=True)[0].strip()
    assert report["image_tokens"] == real.counts(batch) and report["var"]["total_heads_redistributed"] > 0


@pytest.fixture
def qwen_files(shared_dir: Path) -> Path:
    """The real Qwen2.5-VL-3B files (no weights)."""
    if HAS_TORCHVISION:
        pytest.skip("torchvision is installed: the processor loads in full")
    return shared_dir / "real_configs" / QWEN


def test_missing_torchvision_is_named_with_the_install_command(qwen_files: Path, monkeypatch: pytest.MonkeyPatch):
    """A family without an image-only processor: one line naming torchvision and how to install it, raised before
    the weights load (the folder has none, so a later failure would name them), not the 'try tiny-llava' hint."""
    from vlm_attn.patches import _load_all  # noqa: F401
    from vlm_attn.patches.base import _FAMILIES

    # a supported family whose processor has no image-only fallback for this error
    monkeypatch.setattr(_FAMILIES["qwen2_5_vl"], "can_skip", classmethod(lambda cls, error: False))
    from vlm_attn.errors import UserError

    with pytest.raises(UserError) as info:
        load_model(str(qwen_files))
    message = str(info.value)
    assert "\n" not in message and "tiny-llava" not in message and "save_pretrained" not in message
    assert "needs torchvision" in message and "pip install torchvision" in message
    with pytest.raises(SystemExit, match="pip install torchvision"):
        main(["generate", "--model", str(qwen_files), "--method", "var"])


def test_image_token_is_checked_against_the_model_config(qwen_files: Path):
    """The image-only processor's token must be the config's image_token_id: a mismatch is an error naming both."""
    from vlm_attn.patches.qwen2_5_vl import Qwen25VLAdapter

    proc = Qwen25VLAdapter.load_image_only_processor(str(qwen_files), SimpleNamespace(image_token_id=151655))
    assert (proc.image_token, proc.image_token_id, proc.video_token_id) == ("<|image_pad|>", 151655, 151656)
    with pytest.raises(ValueError, match="'<\\|image_pad\\|>' is id 151655 but the model config's image_token_id "
                                         "is 151654"):
        Qwen25VLAdapter.load_image_only_processor(str(qwen_files), SimpleNamespace(image_token_id=151654))


def test_image_token_taken_from_the_config_when_the_tokenizer_lacks_the_default():
    """A tokenizer without `<|image_pad|>` (and no `image_token` attribute): the config's id names the token."""
    from vlm_attn.patches._image_only import match_image_token
    from vlm_attn.patches.qwen2_5_vl import Qwen25VLAdapter
    from vlm_attn.testing.tiny import build_tokenizer

    tok = build_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|my_image|>", "<|video_pad|>"], {},
                          pad_token="<|endoftext|>")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen25VLAdapter.assemble(Qwen2VLImageProcessorPil(), tok, "", {})
    assert proc.image_token_id == tok.unk_token_id  # the class default is unknown to this tokenizer
    match_image_token(proc, SimpleNamespace(image_token_id=3))
    assert (proc.image_token, proc.image_token_id) == ("<|my_image|>", 3)
