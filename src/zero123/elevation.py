"""Estimate the elevation of an input photo's viewpoint (degrees above the object's horizontal plane).

Stable Zero123 conditions on the input view's absolute polar angle and ``to3d`` places its reference camera at the
input elevation (``zero123.camera``); a user rarely knows it. ``estimate_input_elevation`` measures it with the
model's own views, by **azimuth parallax**:

1. the model samples two views of the photo at azimuth changes ``+da`` and ``-da`` (elevation change 0);
2. the optical flow (OpenCV's Farneback) from the photo to each view is measured on the
   object's pixels;
3. a camera at elevation ``e`` that turns by ``w`` radians about the world's vertical axis sees the object turn
   about an axis that is tilted by ``e`` towards the camera. To first order (orthographic camera, image axes ``x``
   right and ``y`` up, pixels from the image centre) a point moves vertically by ``v_y = -w sin(e) x``, whatever
   its depth: the vertical flow's slope across the image gives ``sin(e)``. The horizontal flow depends on the
   unknown depth and is not used. (At ``e = 0`` the object only slides sideways; at ``e = 90`` it spins in the
   image plane.)
4. each candidate elevation is scored by the mean squared residual of ``v_y`` against ``-w sin(e) x + b x y + c``
   over both views (``c``: a free vertical shift, ``b``: a free perspective term, per view); the estimate is the
   best candidate.
5. a guard: if the probe views hardly moved (mean flow below ``MIN_TURN`` of ``w`` x the object's half-width:
   the model did not turn the object, so the flow says nothing about ``e``), the estimate falls back to the prior
   guess ``PRIOR_ELEVATION`` (5 degrees, threestudio's default) and says so in ``method``.

The scoring (steps 3-4) is ``score_elevation_candidates`` and works on any flow, so it can be checked on renders
of known elevation (``estimate_elevation_from_views``). How well the whole estimate works depends on how faithfully
the model turns the object: ``bench/bench_elevation.py`` measures the error against the constant guess (5 degrees,
threestudio's default) on renders of known elevation, for the bundled model and for exact renders.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from .errors import Zero123Error

#: default candidate elevations, degrees: the range of Zero123's (and this project's) training renders
DEFAULT_CANDIDATES = tuple(float(e) for e in range(-20, 71, 5))
#: default azimuth change of the two probe views, degrees
DEFAULT_DELTA_AZIMUTH = 30.0
#: default DDIM steps for the probe views (the estimate needs their geometry, not their texture)
DEFAULT_STEPS = 10
#: start-noise scale of the probe views (low-temperature sampling: the model's most likely geometry; the bundled
#: model's recommended value). The bench measured that at 1 the bundled model's views move without parallax.
PROBE_NOISE_SCALE = 0.5
#: the guess used when the probe views carry no signal (threestudio's default input elevation), degrees
PRIOR_ELEVATION = 5.0
#: below this mean flow, as a fraction of (turn in radians x object half-width), the probe views did not turn
MIN_TURN = 0.1
#: the value ``input_elevation`` takes to ask for an estimate
AUTO = "auto"


@dataclass(frozen=True)
class ElevationEstimate:
    """An input-view elevation estimate.

    ``degrees``: the best candidate; ``candidates``: the elevations tried (degrees); ``scores``: one per candidate,
    the mean squared vertical-flow residual in pixels^2 at the model's image size (lower is better);
    ``slope``: the measured ``sin(e)`` before snapping to a candidate; ``turn``: the probe views' mean flow as a
    fraction of (turn x object half-width), about 0.2-0.6 for true views; ``method``: ``"azimuth-parallax"``, or
    ``"prior"`` when ``turn < MIN_TURN`` and ``degrees`` is ``PRIOR_ELEVATION``.
    """

    degrees: float
    candidates: tuple = field(default_factory=tuple)
    scores: tuple = field(default_factory=tuple)
    slope: float = float("nan")
    turn: float = float("nan")
    method: str = "azimuth-parallax"

    def as_dict(self) -> dict:
        """JSON-ready: ``{"degrees", "method", "slope", "candidates", "scores"}``."""
        d = asdict(self)
        d["candidates"], d["scores"] = list(self.candidates), [round(float(s), 6) for s in self.scores]
        for k in ("slope", "turn"):
            d[k] = None if not math.isfinite(d[k]) else round(float(d[k]), 6)
        return d


def describe(estimate, option: str = "--input-elevation") -> str:
    """The one line the CLIs print for an ``ElevationEstimate`` (or its ``as_dict()``), e.g. ``input elevation:
    estimated 15 deg (give --input-elevation DEG to override)``; a fallback to the prior says so."""
    d = estimate if isinstance(estimate, dict) else estimate.as_dict()
    if d["method"] == "prior":
        return (f"input elevation: {d['degrees']:g} deg, the default guess (the model's views did not turn the "
                f"object enough to measure it; give {option} DEG to override)")
    return f"input elevation: estimated {d['degrees']:g} deg (give {option} DEG to override)"


def is_auto(value) -> bool:
    """True when ``value`` asks for an estimate (the string ``"auto"``, any case)."""
    return isinstance(value, str) and value.strip().lower() == AUTO


def _check_candidates(candidates: Sequence[float]) -> np.ndarray:
    from .camera import check_elevation

    c = np.asarray([float(v) for v in candidates], dtype=np.float64)
    if c.size == 0:
        raise Zero123Error("no candidate elevations given")
    for v in c:
        check_elevation(v, "candidate elevation")
    return c


def _vertical_flow_samples(flow: np.ndarray, mask: np.ndarray):
    """Centred x, y (pixels, right / up positive) and vertical flow (pixels, up positive) on the mask's pixels."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    x = xs - (w - 1) / 2.0
    y = (h - 1) / 2.0 - ys
    vy = -flow[0][ys, xs]  # flows are (row, col) displacements; rows grow downwards
    return x.astype(np.float64), y.astype(np.float64), vy.astype(np.float64)


def _project_out(v: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``v`` minus its least-squares fit on the columns of ``basis`` ``[n,k]``."""
    coef, *_ = np.linalg.lstsq(basis, v, rcond=None)
    return v - basis @ coef


def score_elevation_candidates(flows: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                               delta_azimuths: Sequence[float], candidates: Sequence[float] = DEFAULT_CANDIDATES):
    """Score candidate elevations against measured flows (steps 3-4 of the module docstring).

    ``flows``: per probe view, ``[2,H,W]`` (row, col) displacement in pixels from the input image to the view;
    ``masks``: per view, bool ``[H,W]``, the pixels to use (the object); ``delta_azimuths``: per view, degrees;
    ``candidates``: degrees. Per view the model is ``v_y = -w sin(e) x + b x y / H + c``: ``c`` a vertical shift and
    ``b`` the perspective term (the turn moves one side of the object nearer the camera, which scales it
    vertically), both fitted freely. Returns ``(scores [C], measured sin(e))``: scores are the mean squared residual
    in px^2 (lower is better), the measured value is the least-squares ``sin(e)`` over all views.
    """
    c = _check_candidates(candidates)
    if not (len(flows) == len(masks) == len(delta_azimuths)) or not flows:
        raise Zero123Error("give one flow, one mask and one azimuth change per probe view")
    xs, vys = [], []
    for flow, mask, da in zip(flows, masks, delta_azimuths):
        mask = np.asarray(mask, dtype=bool)
        x, y, vy = _vertical_flow_samples(np.asarray(flow), mask)
        if x.size < 16:
            raise Zero123Error("the object covers too few pixels to estimate its elevation")
        w = math.radians(float(da))
        nuisance = np.stack([np.ones_like(x), x * y / mask.shape[0]], axis=1)
        xs.append(_project_out(x * w, nuisance))  # the shift and perspective terms drop out of both sides
        vys.append(_project_out(vy, nuisance))
    x, vy = np.concatenate(xs), np.concatenate(vys)
    sin_e = np.sin(np.radians(c))
    scores = ((vy[None, :] + sin_e[:, None] * x[None, :]) ** 2).mean(axis=1)
    measured = float(-(x @ vy) / max(float(x @ x), 1e-12))
    return scores, measured


def optical_flow(image: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Dense flow ``[2,H,W]`` (row, col displacement, pixels) from ``image`` to ``view`` (RGB uint8 ``[H,W,3]``):
    OpenCV's Farneback flow on the grey images (5-level pyramid, so turns of tens of degrees are followed)."""
    import cv2

    a, b = (cv2.cvtColor(np.ascontiguousarray(im, dtype=np.uint8), cv2.COLOR_RGB2GRAY) for im in (image, view))
    f = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 5, 15, 5, 5, 1.2, 0)
    return np.stack([f[..., 1], f[..., 0]]).astype(np.float64)


def turn_ratio(flows: Sequence[np.ndarray], mask: np.ndarray, delta_azimuths: Sequence[float]) -> float:
    """Mean flow magnitude on ``mask`` over (turn in radians x the mask's half-width in pixels), averaged over
    views: about 0.2-0.6 when the views really turn the object, near 0 when they copy the input."""
    cols = np.nonzero(np.asarray(mask, dtype=bool).any(axis=0))[0]
    half_width = max((cols.max() - cols.min() + 1) / 2.0, 1.0) if cols.size else 1.0
    ratios = [float(np.hypot(f[0], f[1])[mask].mean()) / (abs(math.radians(float(da))) * half_width)
              for f, da in zip(flows, delta_azimuths)]
    return float(np.mean(ratios))


def estimate_elevation_from_views(image: np.ndarray, mask: np.ndarray, views: Sequence[np.ndarray],
                                  delta_azimuths: Sequence[float],
                                  candidates: Sequence[float] = DEFAULT_CANDIDATES) -> ElevationEstimate:
    """The elevation of ``image`` (RGB ``[H,W,3]``, object ``mask`` bool ``[H,W]``) from views of the same object
    at azimuth changes ``delta_azimuths`` (degrees) and the same elevation, taken from the same distance
    (steps 2-5 of the module docstring)."""
    mask = np.asarray(mask, dtype=bool)
    flows = [optical_flow(image, v) for v in views]
    scores, measured = score_elevation_candidates(flows, [mask] * len(flows), delta_azimuths, candidates)
    turn = turn_ratio(flows, mask, delta_azimuths) if mask.any() else 0.0
    c = _check_candidates(candidates)
    common = dict(candidates=tuple(float(v) for v in c), scores=tuple(float(s) for s in scores), slope=measured,
                  turn=turn)
    if turn < MIN_TURN:
        return ElevationEstimate(degrees=PRIOR_ELEVATION, method="prior", **common)
    return ElevationEstimate(degrees=float(c[int(np.argmin(scores))]), **common)


def _model_of(pipe_or_model):
    model = getattr(pipe_or_model, "model", pipe_or_model)
    if not hasattr(model, "camera_embedding") or not hasattr(model, "decode_latents"):
        raise Zero123Error(f"expected a Zero123Pipeline or Zero123Model, got {type(pipe_or_model).__name__}")
    return model


@torch.no_grad()
def estimate_input_elevation(pipe_or_model, image, *, candidates: Sequence[float] = DEFAULT_CANDIDATES,
                             delta_azimuth: float = DEFAULT_DELTA_AZIMUTH, num_inference_steps: int = DEFAULT_STEPS,
                             guidance_scale: float = 3.0, noise_scale: float = PROBE_NOISE_SCALE, seed: int = 0,
                             matting=None, recentre: bool = True) -> ElevationEstimate:
    """Estimate the elevation (degrees) of the viewpoint of ``image`` with the model's own views.

    ``pipe_or_model``: a ``Zero123Pipeline`` or a ``Zero123Model``; ``image``: path / PIL / array (prepared as for
    sampling: matted, recentred on white), a ``PreparedImage``, or a tensor ``[1,3,S,S]`` in [-1,1] already at the
    model's size (then the mask is the non-white pixels). ``delta_azimuth``: the probe views' azimuth change,
    degrees (+ and -); ``num_inference_steps`` / ``guidance_scale`` / ``noise_scale`` / ``seed``: their DDIM
    sampling (deterministic for a seed; the same whether a pipeline or a bare model is given).
    For ``stable_zero123`` models the probe views are sampled at the default input elevation (5 degrees).
    Costs two sampled views: about ``2 x num_inference_steps`` UNet passes with guidance.
    """
    from .pipelines.zero123_pipeline import Zero123Pipeline
    from .preprocessing import PreparedImage

    c = _check_candidates(candidates)
    if not (math.isfinite(float(delta_azimuth)) and 5.0 <= abs(float(delta_azimuth)) <= 90.0):
        raise Zero123Error(f"probe azimuth change {delta_azimuth} deg must be within 5..90 deg")
    if int(num_inference_steps) < 2:
        raise Zero123Error(f"the probe views need at least 2 DDIM steps, got {num_inference_steps}")
    model = _model_of(pipe_or_model)
    pipe = pipe_or_model if isinstance(pipe_or_model, Zero123Pipeline) else Zero123Pipeline(model)
    if isinstance(image, torch.Tensor):
        tensor = image
        rgb = ((image[0].float().permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        mask = (rgb < 250).any(axis=-1)
    else:
        prepared = image if isinstance(image, PreparedImage) else \
            pipe.prepare_image(image, matting=matting, recentre=recentre)
        tensor, rgb = prepared.tensor, np.asarray(prepared.rgb)
        mask = np.asarray(prepared.rgba)[..., 3] > 127
    das = [float(delta_azimuth), -float(delta_azimuth)]
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    out = pipe(tensor, [0.0, 0.0], das, input_elevation=None, num_inference_steps=int(num_inference_steps),
               guidance_scale=guidance_scale, generator=generator, output_type="pt", progress=False,
               noise_scale=noise_scale)
    views = (out.images.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return estimate_elevation_from_views(rgb, mask, list(views), das, c)
