"""Text -> 3D: SDXL image of the object -> background removal -> image-to-3D (SDS with a Zero123-family model).

The recipe of the Stable Zero123 model card. Three stages, one progress display:

1. **text-to-image** (``zero123.pipelines.text2image``): ``num_candidates`` SDXL / SDXL-Turbo images of
   ``prompt_template`` filled with the prompt (default "a 3D render of {prompt}, single object, centered, white
   background"), candidate ``i`` with seed ``seed + i``; written to ``out_dir/candidates/NN.png``.
2. **background removal**: a foreground mask per candidate (``matting_model``: an ONNX model, see
   ``zero123.matting``; default: ``zero123.preprocessing``'s plain-background segmentation), written as
   ``candidates/NN_mask.png``, scored with ``zero123.matting.mask_quality`` (single connected object, sensible
   size, not touching the frame, crisp). The chosen candidate (``pick``, else the best score, ties -> lowest
   index) is recentred (object's larger side 0.8 of the frame) and written as ``out_dir/input_rgba.png``
   (``rgba_size`` px, transparent background). Scores and settings: ``candidates/scores.json``.
3. **image-to-3D**: ``zero123.pipelines.image_to_3d.to3d(out_dir/input_rgba.png, checkpoint, out_dir, ...)``.

Everything is kept so the 3D stage can be rerun alone: ``zero123 to3d OUT/input_rgba.png --out OUT``
(``TextTo3DResult.rerun_command``). A summary goes to ``out_dir/text_to_3d.json``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from ..errors import Zero123Error
from .text2image import (DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_TEMPLATE, TextToImage, check_model_path,
                          format_prompt, resolve_preset)

CANDIDATES_DIR = "candidates"
INPUT_RGBA_NAME = "input_rgba.png"
SCORES_NAME = "scores.json"
SUMMARY_NAME = "text_to_3d.json"


@dataclass
class TextTo3DResult:
    """Paths and choices of one text-to-3D run. ``result_3d`` is ``to3d``'s result (``None`` with ``skip_3d``)."""

    out_dir: Path
    prompt: str
    full_prompt: str
    candidates: list[Path]
    masks: list[Optional[Path]]
    scores: list[dict]
    chosen: int
    chosen_by: str  # "pick", "score" or "only"
    input_rgba: Path
    scores_path: Path
    summary_path: Path
    rerun_command: str
    result_3d: Any = None
    timings: dict = field(default_factory=dict)


# ----- small helpers ----------------------------------------------------------------------------------------------
def save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as PNG atomically (:mod:`zero123.utils.atomic`)."""
    from ..utils.atomic import atomic_save_image

    return atomic_save_image(image, path, format="PNG")


def save_json(obj, path: Path) -> Path:
    from ..utils.atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def _progress_bar(progress: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(disable=not progress, dynamic_ncols=True, **kw)


def rerun_command(out_dir: Path, checkpoint=None, preset: str = "auto", steps: int | None = None,
                  seed: int = 0, input_elevation: float | None = None, variant: str | None = None) -> str:
    """The ``zero123 to3d`` command line that reruns only the 3D stage on the kept ``input_rgba.png``."""
    cmd = ["zero123", "to3d", str(Path(out_dir) / INPUT_RGBA_NAME), "--out", str(out_dir)]
    if checkpoint is not None:
        cmd += ["--checkpoint", str(checkpoint)]
    if preset != "auto":
        cmd += ["--preset", str(preset)]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    if seed:
        cmd += ["--seed", str(seed)]
    if input_elevation is not None:
        cmd += ["--input-elevation", str(input_elevation)]
    if variant is not None:
        cmd += ["--variant", str(variant)]
    return " ".join(shlex.quote(c) for c in cmd)


def choose_candidate(scores: list[dict], pick: int | None = None) -> tuple[int, str]:
    """Index of the candidate to use and why: ``pick`` if given, else the highest ``score`` (ties: lowest index).

    ``scores[i]`` is ``MaskQuality.to_dict()`` or ``{"score": 0.0, "error": ...}`` for a failed mask.
    """
    n = len(scores)
    if pick is not None:
        if not 0 <= int(pick) < n:
            raise Zero123Error(f"--pick {pick} is out of range: there are {n} candidates (0..{n - 1})")
        if "error" in scores[int(pick)]:
            raise Zero123Error(f"candidate {pick} has no usable foreground: {scores[int(pick)]['error']}")
        return int(pick), "pick"
    usable = [i for i, s in enumerate(scores) if "error" not in s]
    if not usable:
        raise Zero123Error(f"none of the {n} generated images has a usable foreground "
                           f"({scores[0]['error']}); try another --seed, more --num-candidates or a --matting-model")
    if n == 1:
        return 0, "only"
    best = max(usable, key=lambda i: (scores[i]["score"], -i))
    return best, "score"


def score_candidates(images, matting=None, segmentation: str = "auto",
                     mask=None) -> tuple[list[Optional[np.ndarray]], list[dict]]:
    """Foreground mask ``[H,W]`` in [0,1] and ``mask_quality`` scores of each candidate image.

    matting: a callable ``PIL -> mask`` (e.g. ``OnnxMattingModel``) or ``None`` for ``segmentation`` (auto: the
    plain-background rule when the border is plain, else the built-in; ``zero123.preprocessing.foreground_mask``);
    mask: the user's own mask (of the candidates' size), used for every candidate. A candidate whose mask fails (no plain background, empty) gets
    mask ``None`` and ``{"index": i, "score": 0.0, "error": message}``.
    """
    from ..matting import mask_quality
    from ..preprocessing import foreground_mask

    masks: list[Optional[np.ndarray]] = []
    scores: list[dict] = []
    for i, im in enumerate(images):
        try:
            m = np.asarray(foreground_mask(im, matting, method=segmentation, mask=mask), dtype=np.float32)
            scores.append({"index": i, **mask_quality(m).to_dict()})
        except Zero123Error as exc:
            m = None
            scores.append({"index": i, "score": 0.0, "error": str(exc)})
        masks.append(m)
    return masks, scores


def _load_to3d():
    try:
        from .image_to_3d import to3d
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith("image_to_3d"):
            raise Zero123Error("the image-to-3D stage (zero123.pipelines.image_to_3d) is not available in this "
                               "build; use skip_3d / --no-3d to stop after input_rgba.png") from None
        raise
    return to3d


# ----- the pipeline -----------------------------------------------------------------------------------------------
def text_to_3d(prompt: str, t2i_model, checkpoint=None, out_dir: str | os.PathLike = "text_to_3d", *,
               t2i_config=None, t2i_preset: str | None = None, t2i_steps: int | None = None,
               t2i_guidance: float | None = None, t2i_size: int | None = None, t2i_dtype=None,
               prompt_template: str | None = DEFAULT_PROMPT_TEMPLATE,
               negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT, num_candidates: int = 1,
               pick: int | None = None, matting_model=None, matting_kind: str | None = None,
               mask=None, segmentation: str = "auto",
               cpu_offload: bool = False, rgba_size: int = 512,
               preset: str = "auto", steps: int | None = None, seed: int = 0, device=None, dtype=None,
               input_elevation: float | None = None, resume=None, skip_3d: bool = False, progress: bool = True,
               model=None, variant: str | None = None, original_config=None) -> TextTo3DResult:
    """Run text -> image -> mask -> 3D and return the paths (see module docstring).

    prompt: the object, e.g. "a friendly dog". t2i_model: SDXL / SDXL-Turbo diffusers folder or single file
    (``t2i_config`` = its config folder), or an already loaded ``TextToImage``. t2i_*: text-to-image preset
    (``None``: detect Turbo by name) and overrides (steps, guidance scale, square size in px, dtype; fp16 on GPU).
    num_candidates / pick: images to generate and which to use (0-based; ``None`` = best mask score).
    matting_model: ``.onnx`` path or a callable ``PIL -> mask [H,W] in [0,1]``; ``None`` = plain-background
    segmentation; matting_kind: the ONNX model's family (``zero123.matting.MATTING_KINDS``; ``None``: from the
    file name). mask: your own mask of the generated image (e.g. an edited ``candidates/NN_mask.png`` with
    ``pick``); segmentation: auto / plain / builtin / matting (``zero123.preprocessing``). rgba_size: side of
    ``input_rgba.png`` in px. preset, steps, seed, device, dtype, input_elevation (degrees), resume, progress, model,
    variant, original_config: passed to ``to3d`` (``model``: a loaded ``Zero123Model``
    used instead of ``checkpoint``); ``seed`` is also the first text-to-image seed. skip_3d: stop after
    ``input_rgba.png``. cpu_offload: SDXL's networks visit the GPU one at a time (small GPUs).
    """
    from ..preprocessing import recenter

    t_start = time.perf_counter()
    full_prompt = format_prompt(prompt, prompt_template)  # validates prompt and template before any loading
    num_candidates = int(num_candidates)
    if num_candidates < 1:
        raise Zero123Error(f"--num-candidates must be >= 1, got {num_candidates}")
    if pick is not None and not 0 <= int(pick) < num_candidates:
        raise Zero123Error(f"--pick {pick} is out of range: there are {num_candidates} candidates "
                           f"(0..{num_candidates - 1})")
    if int(rgba_size) < 32:
        raise Zero123Error(f"rgba_size must be >= 32 pixels, got {rgba_size}")
    if isinstance(t2i_model, (str, os.PathLike)) or t2i_model is None:
        check_model_path(t2i_model, t2i_config)  # fail in a second on a wrong path, before loading anything
    from ..utils.atomic import reset_folder
    from ..utils.outputs import TEXT_TO_3D_OUTPUTS, check_output_dir, is_within

    out_dir = Path(out_dir).expanduser()
    out_status = check_output_dir(out_dir, TEXT_TO_3D_OUTPUTS, keep=resume is not None and is_within(resume, out_dir))
    to3d = None
    if not skip_3d:  # check the 3D stage's settings now, not after minutes of text-to-image
        to3d = _load_to3d()
        if model is None and checkpoint is not None:
            from ..loading import require_checkpoint

            require_checkpoint(Path(checkpoint).expanduser())
        if resume is None:
            from .image_to_3d_config import preset_config

            preset_config(preset, steps, device=device)
        if input_elevation is not None:
            from ..camera import check_elevation

            check_elevation(float(input_elevation), "input elevation")
    matting = matting_model
    if isinstance(matting_model, (str, os.PathLike)):
        from ..matting import OnnxMattingModel

        matting = OnnxMattingModel(matting_model, kind=matting_kind)

    timings: dict[str, float] = {}
    stages = ["text-to-image", "background removal"] + ([] if skip_3d else ["image-to-3D"])
    cand_dir = out_dir / CANDIDATES_DIR
    with _progress_bar(progress, total=len(stages), desc="text-to-3d", unit="stage", position=0) as bar:
        # 1. text -> image ------------------------------------------------------------------------------------
        bar.set_description(f"[1/{len(stages)}] {stages[0]}")
        t0 = time.perf_counter()
        owned = not isinstance(t2i_model, TextToImage) and not hasattr(t2i_model, "text_encoder_2")
        if hasattr(t2i_model, "text_encoder_2"):  # an already loaded diffusers StableDiffusionXLPipeline
            t2i = TextToImage(t2i_model, resolve_preset(getattr(t2i_model, "name_or_path", None), t2i_preset))
        elif owned:
            t2i = TextToImage.from_pretrained(t2i_model, config=t2i_config, preset=t2i_preset, device=device,
                                              dtype=t2i_dtype, cpu_offload=cpu_offload)
        else:
            t2i = t2i_model
        settings = t2i.settings(prompt, seed=seed, steps=t2i_steps, guidance_scale=t2i_guidance, size=t2i_size,
                                negative_prompt=negative_prompt, prompt_template=prompt_template)
        timings["t2i_load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with _progress_bar(progress, total=num_candidates * settings.steps, desc="SDXL", unit="step",
                           leave=False) as inner:
            images = t2i.generate(prompt, num_images=num_candidates, settings=settings, on_step=inner.update)
        if out_status == "replace":
            reset_folder(out_dir)  # an earlier run's files are replaced whole, never mixed with this run's
        _remove_stale_candidates(cand_dir, num_candidates)
        candidates = [save_png(im, cand_dir / f"{i:02d}.png") for i, im in enumerate(images)]
        timings["t2i_generate_s"] = time.perf_counter() - t0
        if owned:  # free the GPU for the 3D stage
            del t2i
            _free_memory()
        bar.update(1)

        # 2. background removal + choice -------------------------------------------------------------------
        bar.set_description(f"[2/{len(stages)}] {stages[1]}")
        t0 = time.perf_counter()
        masks, scores = score_candidates(images, matting, segmentation, mask)
        mask_paths = [None if m is None else
                      save_png(Image.fromarray(np.round(m * 255).astype(np.uint8)),
                               cand_dir / f"{i:02d}_mask.png") for i, m in enumerate(masks)]
        chosen, chosen_by = choose_candidate(scores, pick)
        rgba = recenter(images[chosen], masks[chosen], size=int(rgba_size))
        input_rgba = save_png(rgba, out_dir / INPUT_RGBA_NAME)
        scores_path = save_json({
            "prompt": prompt, "text_to_image": settings.to_dict(),
            "matting": repr(matting) if matting is not None else "user mask" if mask is not None else
                       f"segmentation: {segmentation}",
            "score": "largest_component * fraction_score * exp(-8 * border_contact) * confidence "
                     "(zero123.matting.mask_quality)",
            "candidates": scores, "chosen": chosen, "chosen_by": chosen_by,
        }, cand_dir / SCORES_NAME)
        timings["matting_s"] = time.perf_counter() - t0
        bar.update(1)

        rerun = rerun_command(out_dir, checkpoint, preset, steps, seed, input_elevation, variant)
        result = TextTo3DResult(out_dir=out_dir, prompt=prompt, full_prompt=full_prompt, candidates=candidates,
                                masks=mask_paths, scores=scores, chosen=chosen, chosen_by=chosen_by,
                                input_rgba=input_rgba, scores_path=scores_path,
                                summary_path=out_dir / SUMMARY_NAME, rerun_command=rerun, timings=timings)
        save_json(_jsonable(result), result.summary_path)  # the kept images are described even if 3D fails

        # 3. image -> 3D ---------------------------------------------------------------------------------------
        if not skip_3d:
            bar.set_description(f"[3/{len(stages)}] {stages[2]}")
            t0 = time.perf_counter()
            try:
                result.result_3d = to3d(input_rgba, checkpoint, out_dir, preset=preset, steps=steps, seed=seed,
                                        device=device, dtype=dtype, resume=resume, input_elevation=input_elevation,
                                        progress=progress, model=model, variant=variant, replace_outputs=False,
                                        original_config=original_config)
            except Zero123Error as exc:
                raise Zero123Error(f"{exc} (image-to-3D stage; {INPUT_RGBA_NAME} is kept, rerun only this stage "
                                   f"with: {rerun})") from None
            timings["to3d_s"] = time.perf_counter() - t0
            bar.update(1)
        bar.set_description("text-to-3d done")
    timings["total_s"] = time.perf_counter() - t_start
    save_json(_jsonable(result), result.summary_path)
    return result


def _remove_stale_candidates(cand_dir: Path, n: int) -> None:
    """Delete ``NN.png`` / ``NN_mask.png`` left by an earlier run into the same folder (all masks, and images
    with ``NN >= n``), so the folder shows exactly this run's candidates."""
    import re

    if not cand_dir.is_dir():
        return
    for p in cand_dir.iterdir():
        m = re.fullmatch(r"(\d{2,})(_mask)?\.png", p.name)
        if m and (m.group(2) or int(m.group(1)) >= n):
            p.unlink()


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
