"""One image loader: paths and PIL images of any mode give the same RGB pixels at every entry point."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vlm_attn.generation import load_rgb
from vlm_attn.prompting import load_image


def test_one_loader_for_paths_and_images(tmp_path):
    assert load_rgb is load_image
    rgba = Image.new("RGBA", (4, 2), (200, 40, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: white after compositing
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black over white: 127
    path = tmp_path / "a.png"
    rgba.save(path)
    from_path, from_image = np.asarray(load_image(path)), np.asarray(load_image(rgba))
    assert from_path.tolist() == from_image.tolist()
    assert from_image[0, 0].tolist() == [255, 255, 255]
    assert from_image[0, 1].tolist() == [127, 127, 127]
    assert from_image[1, 3].tolist() == [200, 40, 0]


def test_rgb_input_is_copied_not_shared():
    rgb = Image.new("RGB", (3, 3), (1, 2, 3))
    out = load_image(rgb)
    assert out is not rgb and out.tobytes() == rgb.tobytes()
