"""Foreground masks, recentring and bad-image errors."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from zero123.errors import Zero123Error
from zero123.preprocessing import load_image, prepare_input_image, segment_foreground


def object_on_plain_background(bg=(240, 240, 240)):
    im = Image.new("RGB", (200, 120), bg)
    d = ImageDraw.Draw(im)
    d.rectangle([20, 30, 59, 89], fill=(200, 30, 30))  # 40 x 60 object, off-centre
    d.rectangle([35, 50, 44, 60], fill=bg)  # a hole inside (filled by segmentation)
    return im


def test_segmentation_of_plain_background():
    mask = segment_foreground(object_on_plain_background())
    assert mask[30:90, 20:60].all() and mask.sum() == 40 * 60


def test_recentred_to_reference_ratio():
    prep = prepare_input_image(object_on_plain_background(), size=100, ratio=0.8)
    alpha = np.asarray(prep.rgba)[..., 3] > 127
    ys, xs = np.nonzero(alpha)
    assert ys.max() - ys.min() + 1 == 80  # larger side = 0.8 * 100
    assert abs((ys.max() + ys.min()) / 2 - 49.5) <= 1 and abs((xs.max() + xs.min()) / 2 - 49.5) <= 1
    rgb = np.asarray(prep.rgb)
    assert (rgb[0, 0] == 255).all()  # white background
    assert prep.tensor.shape == (1, 3, 100, 100) and prep.tensor.min() >= -1 and prep.tensor.max() <= 1


def test_rgba_alpha_is_used():
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse([10, 10, 29, 49], fill=(10, 200, 10, 255))
    prep = prepare_input_image(im, size=64)
    alpha = np.asarray(prep.rgba)[..., 3] > 127
    ys, _ = np.nonzero(alpha)
    assert abs((ys.max() - ys.min() + 1) - round(0.8 * 64)) <= 1


def test_busy_background_is_refused():
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(Zero123Error, match="no plain background"):
        prepare_input_image(noisy, method="plain")


def test_blank_image_is_refused():
    with pytest.raises(Zero123Error, match="no object found"):
        prepare_input_image(Image.new("RGB", (64, 64), (255, 255, 255)))


def test_not_an_image(tmp_path):
    p = tmp_path / "x.png"
    p.write_text("hello")
    with pytest.raises(Zero123Error, match="not a readable image"):
        load_image(p)
    with pytest.raises(Zero123Error, match="image not found"):
        load_image(tmp_path / "missing.png")
