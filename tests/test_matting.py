"""Matting: ONNX models exported here from tiny torch modules, and the mask quality score."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zero123.errors import Zero123Error
from zero123.matting import BORDER_PENALTY, FRACTION_RANGE, OnnxMattingModel, load_matting_model, mask_quality


def _need_onnxruntime():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'zero123[matting]')")
    pytest.importorskip("onnx", reason="onnx is needed to export the test models (pip install onnx)")


class RedChannel(torch.nn.Module):
    """Returns the normalised red channel ``[B,1,H,W]``: tests the exact pre/post-processing per model family."""

    def forward(self, x):
        return x[:, 0:1] * 1.0


class RedMinusBlue(torch.nn.Module):
    """A 'saliency model' for red objects on blue: sigmoid(scale * (r - b)) (or the logits)."""

    def __init__(self, logits: bool = False):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        z = 20.0 * (x[:, 0:1] - x[:, 2:3])
        return z if self.logits else torch.sigmoid(z)


class CentredDisc(torch.nn.Module):
    """Ignores the image and returns a disc of radius 0.35 (in units of the side) centred in the frame."""

    def __init__(self, size: int):
        super().__init__()
        yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, size), torch.linspace(-0.5, 0.5, size), indexing="ij")
        self.register_buffer("disc", ((xx ** 2 + yy ** 2) < 0.35 ** 2).float()[None, None])

    def forward(self, x):
        return self.disc.expand(x.shape[0], -1, -1, -1) + 0.0 * x[:, :1]


def export_onnx(module: torch.nn.Module, path: Path, size: int = 32, dynamic: bool = False, channels: int = 3,
                extra_outputs: int = 0) -> Path:
    """``torch.onnx.export`` (TorchScript exporter) of ``module`` with a ``[1,channels,size,size]`` input."""
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, x):
            y = self.m(x)
            return (y,) + tuple(y * 0.5 for _ in range(extra_outputs)) if extra_outputs else y

    x = torch.rand(1, channels, size, size)
    names = ["mask"] + [f"side{i}" for i in range(extra_outputs)]
    dyn = {"input": {2: "h", 3: "w"}, **{n: {2: "h", 3: "w"} for n in names}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap().eval(), (x,), str(path), input_names=["input"], output_names=names,
                          dynamic_axes=dyn, dynamo=False, opset_version=17)
    return path


def red_disc_image(w=48, h=40, cx=20, cy=22, r=10) -> tuple[Image.Image, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (30, 40, 200)
    img[disc] = (220, 30, 20)
    return Image.fromarray(img), disc


# ----- ONNX model -------------------------------------------------------------------------------------------------
def test_preprocessing_and_postprocessing_per_family(tmp_path):
    """Exact values: the image is at the model size so resizing is the identity, and the expected mask is
    computed here from the red channel with each family's normalisation."""
    _need_onnxruntime()
    rng = np.random.default_rng(0)
    arr = rng.integers(10, 240, size=(32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(arr)
    r = arr[..., 0].astype(np.float64)

    def minmax(v):
        return (v - v.min()) / (v.max() - v.min())

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    expected = {
        # U^2-Net divides by the image's max; values outside [0,1] count as logits -> sigmoid, then min-max
        "u2net_tiny.onnx": minmax(sigmoid((r / r.max() - 0.485) / 0.229)),
        "isnet-tiny.onnx": minmax(sigmoid(r / 255 - 0.5)),
        "BiRefNet-tiny.onnx": sigmoid((r / 255 - 0.485) / 0.229),
    }
    for name, exp in expected.items():
        model = OnnxMattingModel(export_onnx(RedChannel(), tmp_path / name))
        assert model.input_hw == (32, 32)
        mask = model(image)
        assert mask.shape == (32, 32) and mask.dtype == np.float32
        np.testing.assert_allclose(mask, exp, atol=2e-5, err_msg=name)
    assert OnnxMattingModel(tmp_path / "u2net_tiny.onnx", kind="birefnet").kind.name == "birefnet"
    from zero123.matting import detect_kind

    assert [detect_kind(n).name for n in ("u2netp.onnx", "silueta.onnx", "isnet-general-use.onnx",
                                          "BiRefNet-general-epoch_244.onnx", "bria-rmbg-2.0.onnx", "rmbg-1.4.onnx")] \
        == ["u2net", "u2net", "isnet", "birefnet", "birefnet", "isnet"]


def test_red_object_mask_and_preprocessing_integration(tmp_path):
    _need_onnxruntime()
    from zero123.preprocessing import foreground_mask, recenter

    image, disc = red_disc_image()
    for name, module in [("u2net.onnx", RedMinusBlue()), ("birefnet.onnx", RedMinusBlue(logits=True))]:
        model = OnnxMattingModel(export_onnx(module, tmp_path / name, size=32, extra_outputs=2))
        mask = model(image)
        assert mask.shape == disc.shape and 0.0 <= mask.min() and mask.max() <= 1.0
        pred = mask > 0.5
        iou = (pred & disc).sum() / (pred | disc).sum()
        assert iou > 0.85, (name, iou)
        np.testing.assert_array_equal(foreground_mask(image, model), mask)
    rgba = recenter(image, mask, size=64)
    alpha = np.asarray(rgba)[..., 3]
    ys, xs = np.nonzero(alpha > 127)
    assert abs((ys.max() + ys.min()) / 2 - 31.5) <= 1.5 and abs((xs.max() + xs.min()) / 2 - 31.5) <= 1.5
    assert 0.7 * 64 <= ys.max() - ys.min() + 1 <= 0.9 * 64  # larger side ~0.8 of the frame


def test_dynamic_input_size(tmp_path):
    _need_onnxruntime()
    path = export_onnx(CentredDisc(32), tmp_path / "dyn.onnx", dynamic=True)
    # The disc buffer is 32x32, so the graph only runs at 32; a dynamic graph takes its size from input_size.
    model = OnnxMattingModel(path, input_size=32)
    assert model.input_hw == (32, 32)
    assert OnnxMattingModel(path).input_hw == (320, 320)  # u2net family default
    mask = model(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert mask.shape == (64, 64) and mask[32, 32] > 0.99 and mask[0, 0] < 0.01
    fixed = export_onnx(CentredDisc(32), tmp_path / "fixed.onnx")
    with pytest.raises(Zero123Error, match="takes 32x32"):
        OnnxMattingModel(fixed, input_size=64)


def test_bad_matting_models(tmp_path):
    _need_onnxruntime()
    assert load_matting_model(None) is None
    with pytest.raises(Zero123Error, match="not found"):
        OnnxMattingModel(tmp_path / "missing.onnx")
    (tmp_path / "model.pth").write_bytes(b"x")
    with pytest.raises(Zero123Error, match="give a .onnx file"):
        OnnxMattingModel(tmp_path / "model.pth")
    (tmp_path / "garbage.onnx").write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(Zero123Error, match="not a loadable ONNX model") as e:
        OnnxMattingModel(tmp_path / "garbage.onnx")
    assert "\n" not in str(e.value)
    gray = export_onnx(RedChannel(), tmp_path / "gray.onnx", channels=1)
    with pytest.raises(Zero123Error, match=r"expected one \[1,3,H,W\] input"):
        OnnxMattingModel(gray)
    with pytest.raises(Zero123Error, match="unknown matting model kind"):
        OnnxMattingModel(export_onnx(RedChannel(), tmp_path / "ok.onnx"), kind="sam")


# ----- mask quality -----------------------------------------------------------------------------------------------
def _square(size=64, y0=22, x0=22, side=20):
    m = np.zeros((size, size), np.float32)
    m[y0:y0 + side, x0:x0 + side] = 1.0
    return m


def test_mask_quality_terms():
    q = mask_quality(_square())
    assert q.foreground_fraction == pytest.approx(400 / 4096)
    assert (q.largest_component, q.border_contact, q.confidence, q.fraction_score) == (1.0, 0.0, 1.0, 1.0)
    assert q.score == pytest.approx(1.0)

    two = _square() + _square(y0=2, x0=2, side=10)  # 400 + 100 pixels in two parts
    q2 = mask_quality(two)
    assert q2.largest_component == pytest.approx(400 / 500) and q2.score == pytest.approx(0.8)

    diag = np.zeros((8, 8), np.float32)
    diag[2, 2] = diag[3, 3] = 1.0  # diagonal neighbours are one 8-connected component
    assert mask_quality(diag).largest_component == 1.0

    cut = _square(y0=0, x0=22, side=20)  # touches the top edge over 20 of the 252 ring pixels
    q3 = mask_quality(cut)
    assert q3.border_contact == pytest.approx(20 / 252)
    assert q3.score == pytest.approx(math.exp(-BORDER_PENALTY * 20 / 252))

    small = _square(side=8)  # 64 / 4096 of the frame
    assert mask_quality(small).fraction_score == pytest.approx((64 / 4096) / FRACTION_RANGE[0])
    big = np.ones((64, 64), np.float32)
    big[0] = big[-1] = big[:, 0] = big[:, -1] = 0.0
    q4 = mask_quality(big)
    assert q4.fraction_score == pytest.approx((1 - 62 * 62 / 4096) / (1 - FRACTION_RANGE[1]))

    soft = _square() * 0.75  # foreground at 0.75 -> |2m-1| = 0.5 there, 1 elsewhere
    assert mask_quality(soft).confidence == pytest.approx(1 - 0.5 * 400 / 4096)
    assert mask_quality(np.zeros((16, 16))).score == 0.0
    assert mask_quality(np.full((16, 16), 0.5)).confidence == 0.0
    with pytest.raises(Zero123Error, match="2-D"):
        mask_quality(np.zeros((4, 4, 3)))


def test_mask_quality_ranks_candidates():
    good = _square()
    ranked = sorted([("cut", _square(y0=0)), ("two", good + _square(y0=2, x0=2, side=10)), ("good", good),
                     ("tiny", _square(side=3))], key=lambda kv: -mask_quality(kv[1]).score)
    assert ranked[0][0] == "good" and ranked[-1][0] == "tiny"
