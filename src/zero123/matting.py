"""Foreground masks from a real matting / salient-object model (ONNX, optional) and a mask quality score.

``OnnxMattingModel(path)`` runs a single-image saliency or matting network exported to ONNX with onnxruntime
(optional extra: ``pip install "zero123[matting]"``). It works offline: the ``.onnx`` file is a path the user
gives (e.g. the U^2-Net, IS-Net or BiRefNet files that rembg publishes, or any network with the same contract).
The contract, per family (``MATTING_KINDS``; chosen from the file name, or ``kind=``):

========== =================================== ============================== ============ ==================
kind       pixels -> input                     mean / std                     default size output -> mask
========== =================================== ============================== ============ ==================
u2net      RGB / max(pixel value) (U^2-Net)    ImageNet                       320          min-max normalised
isnet      RGB / 255 (DIS / IS-Net)            (0.5, 0.5, 0.5) / (1, 1, 1)    1024         min-max normalised
birefnet   RGB / 255                           ImageNet                       1024         sigmoid(logits)
========== =================================== ============================== ============ ==================

Input: ``[1,3,S,S]`` float32 (RGB resized with Lanczos to the model's size; ``S`` is read from the ONNX graph when
it is fixed there, else the family's default or ``input_size=``). Output: the first graph output, ``[1,1,S,S]``
or ``[1,S,S]``; values outside [0,1] are treated as logits (sigmoid). The mask is resized back (bilinear) to the
image size and returned as float32 ``[H,W]`` in [0,1] (1 = object).

Files that follow this contract (none ships with zero123 and nothing is downloaded; use ones you have, e.g. from
rembg's model releases), with the kind chosen from their names:

=============================== ======== ====== ==========================================================
file                            kind     input  notes
=============================== ======== ====== ==========================================================
``u2net.onnx``                  u2net    320    U^2-Net, general salient objects (about 170 MB)
``u2netp.onnx``                 u2net    320    the small U^2-Net (about 4.5 MB)
``silueta.onnx``                u2net    320    a reduced U^2-Net (about 43 MB)
``isnet-general-use.onnx``      isnet    1024   IS-Net / DIS, general use (about 170 MB)
``BiRefNet-general-*.onnx``     birefnet 1024   BiRefNet (and ``-lite``), logits output, sigmoid applied
=============================== ======== ====== ==========================================================

Use them with ``--matting-model FILE`` on ``zero123 views``, ``to3d`` and ``text-to-3d`` (``--matting-kind`` when
the file name does not say its family). Without one, real photos go through the built-in background removal
(``zero123.segmentation``).

``mask_quality(mask)`` scores how usable a mask is as a single-object reference for image-to-3D (see its
docstring); text-to-3D uses it to choose among several generated candidates.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import Zero123Error

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MattingKind:
    """Pre/post-processing of one model family (see the module table)."""

    name: str
    mean: tuple
    std: tuple
    size: int
    scale: str  # "max": divide by the image's max pixel value (U^2-Net); "255": divide by 255
    minmax: bool  # min-max normalise the output (the U^2-Net / IS-Net reference inference does)


MATTING_KINDS = {
    "u2net": MattingKind("u2net", IMAGENET_MEAN, IMAGENET_STD, 320, "max", True),
    "isnet": MattingKind("isnet", (0.5, 0.5, 0.5), (1.0, 1.0, 1.0), 1024, "255", True),
    "birefnet": MattingKind("birefnet", IMAGENET_MEAN, IMAGENET_STD, 1024, "255", False),
}


def detect_kind(path: str | os.PathLike) -> MattingKind:
    """The family from the file name: "birefnet"/"rmbg-2" (BRIA RMBG-2.0) -> birefnet; "isnet"/"dis"/"rmbg"
    (BRIA RMBG-1.4 is an IS-Net) -> isnet; else u2net (u2net, u2netp, silueta, ...)."""
    name = Path(path).name.lower()
    if "birefnet" in name or "rmbg-2" in name or "rmbg2" in name or "rmbg_2" in name:
        return MATTING_KINDS["birefnet"]
    if "isnet" in name or name.startswith("dis") or "-dis" in name or "_dis" in name or "rmbg" in name:
        return MATTING_KINDS["isnet"]
    return MATTING_KINDS["u2net"]


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise Zero123Error("a matting model needs onnxruntime: pip install \"zero123[matting]\" "
                           "(or pip install onnxruntime)") from None
    return onnxruntime


class OnnxMattingModel:
    """``model(image) -> mask``: an ONNX salient-object / matting network (see module docstring).

    path: ``.onnx`` file. kind: ``"u2net"``, ``"isnet"``, ``"birefnet"`` or ``None`` (from the file name).
    input_size: the square input side when the graph does not fix it. providers: onnxruntime execution providers
    (default CUDA when onnxruntime-gpu has it, else CPU).
    """

    def __init__(self, path: str | os.PathLike, *, kind: str | None = None, input_size: int | None = None,
                 providers: Sequence[str] | None = None):
        ort = _import_onnxruntime()
        path = Path(path).expanduser()
        if not path.exists():
            raise Zero123Error(f"matting model not found: {path}")
        if path.is_dir() or path.suffix.lower() != ".onnx":
            raise Zero123Error(f"{path} is not an ONNX matting model: give a .onnx file (e.g. u2net.onnx, "
                               "isnet-general-use.onnx, BiRefNet-general.onnx)")
        if kind is None:
            self.kind = detect_kind(path)
        elif str(kind).lower() in MATTING_KINDS:
            self.kind = MATTING_KINDS[str(kind).lower()]
        else:
            raise Zero123Error(f"unknown matting model kind {kind!r}: use {', '.join(MATTING_KINDS)}")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own (pybind) exception types for bad files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise Zero123Error(f"{path} is not a loadable ONNX model ({first[:200]})") from None
        self.path = path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if inputs else []
        if len(inputs) != 1 or len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            shapes = [tuple(i.shape) for i in inputs]
            raise Zero123Error(f"{path} is not an image segmentation model: expected one [1,3,H,W] input, "
                               f"got {shapes}")
        if not outputs or len(outputs[0].shape) not in (3, 4):
            raise Zero123Error(f"{path} is not an image segmentation model: its first output is not a "
                               "[1,1,H,W] or [1,H,W] mask")
        self.input_name = inputs[0].name
        h, w = inputs[0].shape[2], inputs[0].shape[3]
        fixed = isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0
        if fixed:
            if input_size is not None and (int(input_size), int(input_size)) != (h, w):
                raise Zero123Error(f"{path} takes {h}x{w} inputs; input_size={input_size} does not match")
            self.input_hw = (int(h), int(w))
        else:
            s = int(input_size or self.kind.size)
            if s < 8:
                raise Zero123Error(f"matting input size must be >= 8, got {s}")
            self.input_hw = (s, s)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB image -> ``[1,3,H,W]`` float32 normalised as the model family expects."""
        h, w = self.input_hw
        rgb = np.asarray(image.convert("RGB").resize((w, h), Image.Resampling.LANCZOS), dtype=np.float32)
        denom = max(float(rgb.max()), 1e-6) if self.kind.scale == "max" else 255.0
        x = (rgb / denom - np.asarray(self.kind.mean, np.float32)) / np.asarray(self.kind.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)

    def postprocess(self, raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """First output -> mask ``[H,W]`` in [0,1] at ``size = (width, height)``."""
        pred = np.asarray(raw, dtype=np.float32)
        pred = pred.reshape(-1, pred.shape[-2], pred.shape[-1])[0]  # [1,1,S,S] / [1,S,S] -> [S,S]
        if not np.isfinite(pred).all():
            raise Zero123Error(f"matting model {self.path.name} produced NaN/inf values")
        if pred.min() < 0.0 or pred.max() > 1.0:  # logits
            pred = 1.0 / (1.0 + np.exp(-np.clip(pred, -60.0, 60.0)))
        if self.kind.minmax:
            lo, hi = float(pred.min()), float(pred.max())
            pred = (pred - lo) / (hi - lo) if hi - lo > 1e-8 else np.zeros_like(pred)
        mask = Image.fromarray(np.ascontiguousarray(pred, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR)
        return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Mask ``[H,W]`` float32 in [0,1] of ``image`` (PIL, any mode; alpha is ignored)."""
        x = self.preprocess(image)
        out = self.session.run(None, {self.input_name: x})[0]
        return self.postprocess(out, image.size)

    def __repr__(self) -> str:
        return f"OnnxMattingModel({str(self.path)!r}, kind={self.kind.name!r}, input={self.input_hw})"


def load_matting_model(path: str | os.PathLike | None, **kwargs) -> OnnxMattingModel | None:
    """``OnnxMattingModel(path, **kwargs)``, or ``None`` when no path is given (use plain-background segmentation)."""
    return None if path is None or str(path) == "" else OnnxMattingModel(path, **kwargs)


# ----- mask quality -----------------------------------------------------------------------------------------------
#: Foreground fraction of the frame considered normal for a centred single object.
FRACTION_RANGE = (0.08, 0.65)
#: Border-contact penalty ``exp(-BORDER_PENALTY * border_contact)``.
BORDER_PENALTY = 8.0


@dataclass
class MaskQuality:
    """How good a foreground mask is as a single-object image-to-3D reference; every term is in [0,1].

    * ``foreground_fraction``: fraction of the frame where mask > 0.5;
    * ``fraction_score``: 1 inside ``FRACTION_RANGE``, falling linearly to 0 at an empty / full frame;
    * ``largest_component``: share of foreground pixels in the largest 8-connected component (1 = one object);
    * ``border_contact``: share of the frame's outermost pixel ring that is foreground (> 0: likely cut off);
    * ``confidence``: mean of ``|2 m - 1|``, 1 for a crisp mask, 0 for an undecided all-0.5 one;
    * ``score`` = ``largest_component * fraction_score * exp(-8 * border_contact) * confidence``.
    """

    score: float
    foreground_fraction: float
    fraction_score: float
    largest_component: float
    border_contact: float
    confidence: float

    def to_dict(self) -> dict:
        return {k: round(float(v), 6) for k, v in asdict(self).items()}


def mask_quality(mask: np.ndarray) -> MaskQuality:
    """Score a mask ``[H,W]`` with values in [0,1] (bool accepted). See ``MaskQuality`` for the terms."""
    from scipy import ndimage

    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 2 or min(m.shape) < 2:
        raise Zero123Error(f"mask must be a 2-D array of at least 2x2, got shape {tuple(m.shape)}")
    m = np.clip(np.nan_to_num(m, nan=0.0), 0.0, 1.0)
    fg = m > 0.5
    frac = float(fg.mean())
    lo, hi = FRACTION_RANGE
    fraction_score = frac / lo if frac < lo else (1.0 - frac) / (1.0 - hi) if frac > hi else 1.0
    if fg.any():
        labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel())[1:]
        largest = float(sizes.max() / sizes.sum())
    else:
        largest = 0.0
    ring = np.concatenate([fg[0], fg[-1], fg[1:-1, 0], fg[1:-1, -1]])
    border = float(ring.mean())
    confidence = float(np.abs(2.0 * m - 1.0).mean())
    score = largest * fraction_score * math.exp(-BORDER_PENALTY * border) * confidence
    return MaskQuality(score=score, foreground_fraction=frac, fraction_score=float(fraction_score),
                       largest_component=largest, border_contact=border, confidence=confidence)
