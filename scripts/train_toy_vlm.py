"""Train a small LLaVA-architecture VLM on the toy COCO set, on CPU, in minutes (issue 7).

The model is the real transformers `LlavaForConditionalGeneration` (a tiny CLIP vision tower, a projector and a
tiny Llama) with a word-level tokenizer and a real `LlavaProcessor`, so everything downstream (apply, generate,
eval) treats it like any checkpoint. It learns two tasks from the toy set made by `make_toy_coco.py`:

- captioning ("Please describe this image in detail." -> a caption naming every object), which carries the
  set's co-occurrence bias (fork -> knife, car -> traffic light, ...), i.e. a language prior to hallucinate from;
- object questions ("Is there a X in the image?" -> "yes" / "no"), POPE-style, half present and half absent:
  one per image by default (--questions 1, alternating yes and no), so that two thirds of the compute goes to
  captions; a 7-minute comparison gave caption recall 0.46 with one question per image against 0.39 with two.

Training stops after --minutes of wall time (or --steps), with a progress bar; the result is saved with
`save_pretrained` (weights + processor). Usage:

    python scripts/make_toy_coco.py --out toy_coco
    python scripts/train_toy_vlm.py --data toy_coco --out toy_vlm --minutes 28.5
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

CAPTION_PROMPT = "Please describe this image in detail."
QUESTION = "Is there a {obj} in the image?"
TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
IMAGE_SIZE, PATCH = 96, 12


def build_processor(words: list[str]):
    """Word-level tokenizer over the data's words + a real LlavaProcessor with the PIL CLIP image processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    special = ["<pad>", "<s>", "</s>", "<image>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(special + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(special[:4])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                             crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=TEMPLATE)


def build_model(processor):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tok = processor.tokenizer
    vision = dict(model_type="clip_vision_model", hidden_size=96, intermediate_size=192, num_hidden_layers=4,
                  num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH)
    text = dict(model_type="llama", hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                tie_word_embeddings=True)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlavaForConditionalGeneration(config)


def load_split(root: Path, split: str):
    inst = json.loads((root / "annotations" / f"instances_{split}2014.json").read_text())
    caps = json.loads((root / "annotations" / f"captions_{split}2014.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    objects: dict[int, set[str]] = {im["id"]: set() for im in inst["images"]}
    for a in inst["annotations"]:
        objects[a["image_id"]].add(names[a["category_id"]])
    captions: dict[int, list[str]] = {}
    for c in caps["annotations"]:
        captions.setdefault(c["image_id"], []).append(c["caption"])
    files = {im["id"]: root / f"{split}2014" / im["file_name"] for im in inst["images"]}
    return files, objects, captions, sorted(names.values())


def encode(processor, prompt: str, answer: str, n_image: int) -> tuple[list[int], list[int]]:
    """Token ids of one chat turn + answer, and labels (-100 on the prompt), with the image slot expanded."""
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}], add_generation_prompt=True
    ).replace("<image>", "<image>" * n_image)
    tok = processor.tokenizer
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def make_examples(processor, files, objects, captions, categories, n_image, rng, questions=1):
    """(image_id, ids, labels) for every caption and `questions` (1 or 2) object questions per image.

    With one question, images alternate between a present ("yes") and an absent ("no") object.
    """
    examples = []
    for k, image_id in enumerate(sorted(files)):
        for cap in captions[image_id]:
            examples.append((image_id, *encode(processor, CAPTION_PROMPT, cap, n_image)))
        present = sorted(objects[image_id])
        absent = [c for c in categories if c not in objects[image_id]]
        pairs = [(rng.choice(present), "yes"), (rng.choice(absent), "no")]
        for obj, ans in (pairs if questions == 2 else [pairs[k % 2]]):
            examples.append((image_id, *encode(processor, QUESTION.format(obj=obj), ans, n_image)))
    return examples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="toy COCO root written by make_toy_coco.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=28.5,
                    help="wall-clock budget for the training loop (28.5 keeps the whole run within 30 minutes)")
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: only the time budget)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--questions", type=int, choices=(1, 2), default=1,
                    help="yes/no object questions per image (beside its captions)")
    ap.add_argument("--init", default=None, help="continue from a model saved by this script (weights + processor)")
    args = ap.parse_args(argv)
    launched = time.perf_counter()  # the whole run (tokenizer, preprocessing, training, saving) is what issue 7 times
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    root = Path(args.data)
    files, objects, captions, categories = load_split(root, "train")
    words = " ".join([CAPTION_PROMPT, QUESTION, "USER ASSISTANT yes no", *categories,
                      *(c for cs in captions.values() for c in cs)]).lower().replace("?", " ? ").replace(".", " . ")
    if args.init:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        processor = AutoProcessor.from_pretrained(args.init)
        model = LlavaForConditionalGeneration.from_pretrained(args.init).train()
        with torch.no_grad():  # from_pretrained leaves CPU weights as views of the mmapped file: own them first
            for param in model.parameters():
                param.data = param.data.clone()
    else:
        processor = build_processor(words.split() + ["?", ".", ",", ":", "{obj}"])
        model = build_model(processor).train()
    n_image = (IMAGE_SIZE // PATCH) ** 2
    examples = make_examples(processor, files, objects, captions, categories, n_image, rng, args.questions)
    ids_sorted = sorted(files)
    index = {i: k for k, i in enumerate(ids_sorted)}
    pixels = []
    for k in tqdm(range(0, len(ids_sorted), 256), desc="preprocessing images"):
        batch = [Image.open(files[i]).convert("RGB") for i in ids_sorted[k : k + 256]]
        pixels.append(processor.image_processor(batch, return_tensors="pt")["pixel_values"].half())
    pixels = torch.cat(pixels)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    pad = processor.tokenizer.pad_token_id
    budget = args.minutes * 60
    start = time.perf_counter()
    step, ema = 0, None
    bar = tqdm(desc="training", unit="step")
    while True:
        elapsed = time.perf_counter() - start
        if (args.steps and step >= args.steps) or elapsed > budget:
            break
        # schedule on the fraction of the budget used: warm-up then cosine decay
        frac = min(1.0, max(step / args.steps if args.steps else 0.0, elapsed / budget))
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = rng.sample(examples, args.batch_size)
        width = max(len(b[1]) for b in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (_, x, y) in enumerate(batch):  # right padding for training
            ids[r, : len(x)] = torch.tensor(x)
            labels[r, : len(y)] = torch.tensor(y)
            mask[r, : len(x)] = 1
        pv = pixels[[index[b[0]] for b in batch]].float()
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.1e}")
    bar.close()
    model.eval()
    out = Path(args.out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({
        "data": str(root), "steps": step, "minutes": (time.perf_counter() - start) / 60, "final_loss_ema": ema,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "examples": len(examples),
        "init": args.init, "questions_per_image": args.questions, "total_minutes": (time.perf_counter() - launched) / 60,
    }, indent=2))
    sys.stdout.write(f"trained {step} steps, loss {ema:.3f}; saved to {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
