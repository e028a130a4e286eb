"""zero123.preprocessing.load_image on real-world files: size limits, early reduction, EXIF, modes, formats;
and checkpoint files that are not checkpoints."""

import logging
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from zero123 import preprocessing
from zero123.errors import CheckpointError, Zero123Error
from zero123.preprocessing import has_alpha, load_image, prepare_input_image


def object_rgb(w=60, h=40) -> np.ndarray:
    rgb = np.full((h, w, 3), 250, np.uint8)
    rgb[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (200, 40, 30)
    return rgb


def test_pixel_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(object_rgb(200, 150)).save(path)
    monkeypatch.setattr(preprocessing, "MAX_PIXELS", 100 * 100)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(Zero123Error, match=r"big.png is 200x150 pixels \(0 megapixels\); zero123 reads images of "
                                           r"up to 0 megapixels: downscale it first"):
        load_image(path)
    assert decoded == []  # refused before decoding


def test_pil_bomb_error_and_warning_never_surface(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    Image.fromarray(object_rgb(100, 80)).save(path)
    monkeypatch.setattr(preprocessing, "MAX_PIXELS", 10 ** 9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 8000 px > 2 x 3000: PIL's DecompressionBombError
    with pytest.raises(Zero123Error, match="photo.png has more than 0 megapixels"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 8000 px > 5000: PIL's DecompressionBombWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        im = load_image(path)
    assert im.size == (100, 80) and caught == []


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_large_photos_are_reduced_while_read_and_said_once(tmp_path, monkeypatch, caplog, suffix):
    monkeypatch.setattr(preprocessing, "MAX_WORKING_SIDE", 64)
    src = Image.fromarray(object_rgb(300, 200))
    path = tmp_path / f"photo{suffix}"
    src.save(path, quality=95) if suffix == ".jpg" else src.save(path)
    with caplog.at_level(logging.WARNING, logger="zero123.preprocessing"):
        im = load_image(path)
    assert im.size == (64, 43) and im.mode == "RGB"
    assert [r.getMessage() for r in caplog.records] == [f"{path} is 300x200 pixels: read at 64x43"]
    # the same picture as a plain full decode + resize (JPEG: decoded at a reduced DCT scale first)
    ref = np.asarray(src.resize((64, 43), Image.Resampling.LANCZOS), dtype=np.float32)
    assert np.abs(np.asarray(im, dtype=np.float32) - ref).mean() < 6.0


def test_exif_orientation_is_applied(tmp_path):
    rgb = object_rgb(60, 40)
    rgb[:5, :5] = (0, 0, 255)  # a blue top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    im = np.asarray(load_image(path))
    assert im.shape == (60, 40, 3)
    assert im[1, -2, 2] > 200 and im[1, -2, 0] < 60  # the blue corner is now top-right


def test_modes_and_formats_become_8bit_rgb_or_rgba(tmp_path):
    rgb = object_rgb()
    gray16 = (rgb[..., 0].astype(np.uint16) * 257)
    cases = {}
    Image.fromarray(gray16).save(tmp_path / "gray16.png")  # mode I;16
    cases["gray16.png"] = ("RGB", rgb[..., 0])
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    cases["gray.png"] = ("RGB", np.asarray(Image.fromarray(rgb).convert("L")))
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(tmp_path / "palette.png")
    cases["palette.png"] = ("RGB", np.asarray(pal.convert("RGB"))[..., 0])
    pal.save(tmp_path / "palette_t.png", transparency=int(np.asarray(pal)[0, 0]))  # background index transparent
    cases["palette_t.png"] = ("RGBA", None)
    rgba = np.dstack([rgb, np.where(rgb[..., 0] == 200, 255, 0).astype(np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "obj.webp", lossless=True, exact=True)  # keep hidden colours
    cases["obj.webp"] = ("RGBA", rgb[..., 0])
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    cases["cmyk.jpg"] = ("RGB", None)
    Image.fromarray(rgba[..., [0, 3]]).save(tmp_path / "la.png")  # grayscale + alpha
    cases["la.png"] = ("RGBA", rgb[..., 0])
    for name, (mode, red) in cases.items():
        im = load_image(tmp_path / name)
        assert im.mode == mode, name
        if red is not None:
            assert np.abs(np.asarray(im)[..., 0].astype(int) - red).max() <= 1, name
        prep = prepare_input_image(tmp_path / name, size=32)  # and each one goes through to the model input
        assert prep.tensor.shape == (1, 3, 32, 32), name
    assert has_alpha(load_image(tmp_path / "palette_t.png")) and not has_alpha(load_image(tmp_path / "palette.png"))


def test_truncated_and_fake_images_are_one_line_errors(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(object_rgb(200, 200)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(Zero123Error, match="cut.png is not a readable image") as info:
        load_image(path)
    assert "\n" not in str(info.value)
    (tmp_path / "fake.jpg").write_text("<html>404</html>")
    with pytest.raises(Zero123Error, match="fake.jpg is not a readable image"):
        load_image(tmp_path / "fake.jpg")


# ----- checkpoint files that are not checkpoints -------------------------------------------------------------------
def test_random_bytes_text_and_plain_pickles_are_named_as_such(tmp_path):
    from zero123.loading.safe_io import read_state_dict

    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096).replace(b"PK", b"pk"))
    with pytest.raises(CheckpointError, match=r"random.ckpt is not a PyTorch checkpoint: torch.save writes a zip "
                                              r"archive or a pickle, and this file is neither \(it starts with bytes"):
        read_state_dict(tmp_path / "random.ckpt")
    (tmp_path / "page.ckpt").write_text("<!DOCTYPE html><title>Sign in</title>")
    with pytest.raises(CheckpointError, match="starts with text '<!DOCTYPE html><title>Si'"):
        read_state_dict(tmp_path / "page.ckpt")
    (tmp_path / "plain.ckpt").write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    with pytest.raises(CheckpointError, match="plain.ckpt is a plain Python pickle, not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "plain.ckpt")
    # both torch.save formats still load
    for zip_format in (True, False):
        path = tmp_path / f"ok_{zip_format}.ckpt"
        torch.save({"state_dict": {"w": torch.arange(3.0)}}, path, _use_new_zipfile_serialization=zip_format)
        assert torch.equal(read_state_dict(path)["w"], torch.arange(3.0))
