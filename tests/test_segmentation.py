"""Background removal for real photos: the built-in (GrabCut) beats the plain-background rule on composites with
exact masks, the user's --mask is used as given, the ONNX route, large photos downscaled, and the CLI on chelsea."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zero123.errors import Zero123Error
from zero123.preprocessing import foreground_mask, load_mask, prepare_input_image, segment_foreground
from zero123.segmentation import builtin_foreground

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import bench_segmentation as bench  # noqa: E402  (the benchmark's cases and metrics, one implementation)


@pytest.fixture(scope="module")
def composites():
    """Real textured meshes (pybullet_data's duck and lego brick) rendered and composited over a grass photo,
    the astronaut photo and a graded background: (name, image, exact mask)."""
    renders = bench.render_objects(["duck", "lego"], views=1, size=256)
    rng = np.random.default_rng(0)
    size = (320, 240)
    out = []
    for (name, _), bg in [(("duck", 0), "grass"), (("lego", 0), "astronaut"), (("duck", 0), "gradient")]:
        back = bench.graded_background(rng, size) if bg == "gradient" else bench.clutter_background(bg, size)
        img, mask = bench.composite(renders[(name, 0)], back, rng)
        out.append((f"{name}_on_{bg}", Image.fromarray(img), mask))
    return out


def test_builtin_reaches_an_iou_the_plain_rule_cannot(composites):
    for name, image, gt in composites:
        pred = builtin_foreground(image)
        assert pred.shape == gt.shape and pred.dtype == np.float32 and 0 <= pred.min() and pred.max() <= 1
        iou = bench.iou(pred > 0.5, gt)
        assert iou >= 0.75, (name, iou)
        assert bench.boundary_f(pred > 0.5, gt) >= 0.6, name
        try:
            plain_iou = bench.iou(segment_foreground(image) > 0.5, gt)
        except Zero123Error as exc:
            assert "no plain background" in str(exc)
            plain_iou = 0.0
        assert plain_iou < 0.6, (name, plain_iou)
        # the default route ("auto") picks the built-in for these photos
        np.testing.assert_array_equal(foreground_mask(image), pred)


def test_metrics_against_hand_computed_values():
    a = np.zeros((20, 20), bool)
    a[5:15, 5:15] = True
    b = np.zeros_like(a)
    b[5:15, 10:20] = True
    assert bench.iou(a, b) == pytest.approx(50 / 150)
    assert bench.boundary_f(a, a) == 1.0 and bench.boundary_f(a, np.zeros_like(a)) == 0.0
    far = np.zeros((200, 200), bool)
    far[10:30, 10:30] = True
    near = np.zeros_like(far)
    near[150:170, 150:170] = True
    assert bench.boundary_f(far, near) == 0.0  # same shape, far apart: no boundary pixel within tolerance


def test_user_mask_is_used_as_given(tmp_path, composites):
    _, image, gt = composites[0]
    path = tmp_path / "mask.png"
    Image.fromarray((gt * 255).astype(np.uint8)).save(path)
    prep = prepare_input_image(image, size=64, mask=path)
    np.testing.assert_array_equal(prep.mask, gt.astype(np.float32))
    np.testing.assert_array_equal(foreground_mask(image, mask=path), gt.astype(np.float32))
    # an RGBA cutout's alpha is its mask; a mask of another size is refused in one line
    cutout = np.dstack([np.asarray(image), (gt * 255).astype(np.uint8)])
    np.testing.assert_array_equal(load_mask(Image.fromarray(cutout, "RGBA")), gt.astype(np.float32))
    with pytest.raises(Zero123Error, match="the mask is 10x10 pixels but the photo is 320x240"):
        prepare_input_image(image, mask=np.ones((10, 10), np.uint8) * 255)
    with pytest.raises(Zero123Error, match="mask is empty"):
        load_mask(np.zeros((5, 5)))
    with pytest.raises(Zero123Error, match="unknown segmentation method"):
        prepare_input_image(image, method="magic")
    from zero123.pipelines.image_to_3d import to3d

    with pytest.raises(Zero123Error, match="the mask is 10x10 pixels"):  # before the (missing) model is loaded
        to3d(image, tmp_path / "none.ckpt", tmp_path / "o", mask=np.ones((10, 10)), progress=False)
    assert not (tmp_path / "o").exists()


def test_large_photo_is_downscaled_in_one_line(capsys):
    big = Image.new("RGB", (2000, 1500), (235, 235, 235))
    big.paste((200, 30, 30), (600, 400, 1400, 1100))
    prep = prepare_input_image(big, size=64)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["downscaled 2000x1500 -> 1024x768 for segmentation"]
    assert prep.mask.shape == (768, 1024)
    ys, xs = np.nonzero(prep.mask > 0.5)  # the square 600..1400 x 400..1100, scaled by 1024 / 2000
    assert abs(xs.min() - 307) <= 2 and abs(xs.max() - 716) <= 2 and abs(ys.min() - 205) <= 2


def _chelsea(tmp_path):
    from skimage import data

    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def test_cli_views_on_a_real_photo_with_no_flag(tmp_path, fixtures_dir):
    from zero123.cli import main

    photo, out = _chelsea(tmp_path), tmp_path / "views"
    rc = main(["views", str(photo), "--checkpoint", str(fixtures_dir / "tiny_zero123_ldm.ckpt"), "--azimuth", "90",
               "--steps", "2", "--out", str(out)])
    assert rc == 0
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (300, 451) and 0.02 < (mask > 127).mean() < 0.9
    np.testing.assert_array_equal(mask, (builtin_foreground(Image.open(photo)) * 255).round().astype(np.uint8))
    assert Image.open(out / "view_00.png").size == (32, 32)
    alpha = np.asarray(Image.open(out / "input_rgba.png"))[..., 3]
    assert 0 < (alpha > 127).mean() < 1


def test_cli_views_mask_and_onnx_routes(tmp_path, fixtures_dir):
    pytest.importorskip("onnxruntime")
    from test_matting import CentredDisc, export_onnx

    from zero123.cli import main
    from zero123.matting import OnnxMattingModel

    photo = _chelsea(tmp_path)
    ckpt = str(fixtures_dir / "tiny_zero123_ldm.ckpt")
    user = np.zeros((300, 451), np.uint8)
    user[60:250, 100:380] = 255
    Image.fromarray(user).save(tmp_path / "user.png")
    rc = main(["views", str(photo), "--checkpoint", ckpt, "--azimuth", "90", "--steps", "2",
               "--mask", str(tmp_path / "user.png"), "--out", str(tmp_path / "m")])
    assert rc == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m" / "mask.png")), user)

    onnx = export_onnx(CentredDisc(32), tmp_path / "u2netp.onnx", size=32)
    rc = main(["views", str(photo), "--checkpoint", ckpt, "--azimuth", "90", "--steps", "2",
               "--matting-model", str(onnx), "--out", str(tmp_path / "o")])
    assert rc == 0
    expected = OnnxMattingModel(onnx)(Image.open(photo))
    got = np.asarray(Image.open(tmp_path / "o" / "mask.png")).astype(np.float32) / 255
    assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("extra, message", [
    (["--mask", "{small}"], "the mask is 10x10 pixels but the photo is 451x300"),
    (["--mask", "{missing}"], "image not found"),
    (["--segmentation", "matting"], "--segmentation matting needs --matting-model"),
    (["--matting-model", "{missing}"], "matting model not found"),
])
def test_foreground_option_errors_come_before_the_model(tmp_path, capsys, extra, message):
    from zero123.cli import main

    photo = _chelsea(tmp_path)
    Image.new("L", (10, 10), 255).save(tmp_path / "small.png")
    extra = [a.format(small=tmp_path / "small.png", missing=tmp_path / "nope.png") for a in extra]
    for cmd in (["views", str(photo)], ["to3d", str(photo)]):
        # a checkpoint that does not exist: the foreground error must be reported first
        rc = main(cmd + extra + ["--checkpoint", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and message in lines[0], (cmd, lines)
        assert not (tmp_path / "o").exists()


def test_cli_to3d_on_a_real_photo_with_no_flag(tmp_path):
    import torch

    from zero123.cli import main
    from zero123.loading import save_pretrained
    from zero123.models.configs import tiny_config

    torch.manual_seed(0)
    ckpt = save_pretrained(tiny_config("stable_zero123").build(seed=0).eval(), tmp_path / "tiny_model")
    photo, out = _chelsea(tmp_path), tmp_path / "out"
    rc = main(["to3d", str(photo), "--checkpoint", str(ckpt), "--out", str(out), "--preset", "tiny", "--steps", "1",
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (300, 451) and 0.02 < (mask > 127).mean() < 0.9
    for name in ("model.glb", "model.obj", "input_rgba.png"):
        assert (out / name).stat().st_size > 0
