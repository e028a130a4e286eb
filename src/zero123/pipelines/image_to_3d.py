"""Image to 3D: one object photo -> textured mesh (OBJ/GLB/PLY) + turntable video, by SDS with a Zero123 model.

threestudio's ``stable-zero123`` recipe (see :mod:`zero123.pipelines.image_to_3d_config`), without custom CUDA,
from swappable parts chosen by config keys: a 3D representation (``representation: nerf``, a hash-grid NeRF,
:mod:`zero123.representations`) rendered from random cameras and optimised with a guidance (``guidance:
zero123-sds``, score distillation from the diffusion model, :mod:`zero123.guidance`) plus the reference-view
RGB/mask losses and the representation's regularisers; then a mesh, a baked UV texture and videos
(:mod:`zero123.export`).

This module is the entry point (:func:`to3d`, :func:`export_results`, :func:`load_guidance_model`); the step and
the checkpoint are :mod:`.image_to_3d_trainer` (the step's order is there), the input preparation
:mod:`.image_to_3d_reference`; their public names are re-exported here.

Runs are resumable: ``<out>/checkpoints/state.pt`` (the representation's state, optimiser, random-generator
states, step, config) is written every ``checkpoint_every`` steps and on Ctrl-C; ``resume=<out dir or file>``
continues and gives exactly the steps an uninterrupted run would have taken (same seed, same device).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Zero123Error
from ..rendering.cameras import turntable_cameras
from ..utils.device import resolve_device, resolve_dtype
from .image_to_3d_config import ImageTo3DConfig, preset_config
from .image_to_3d_reference import ReferenceImage, condition_image, prepare_reference  # noqa: F401 (re-exported)
from .image_to_3d_trainer import (CHECKPOINT_NAME, CHECKPOINT_VERSION, ImageTo3DTrainer,  # noqa: F401
                                  checkpoint_path, load_checkpoint)

INPUT_RGBA_NAME = "input_rgba.png"  # the prepared input, the same name as in `views` and `text-to-3d`


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`to3d`'s optimisation, after the state was saved: ``checkpoint`` (the ``state.pt``
    written), ``out_dir``, ``step`` (steps done) and ``steps`` (the run's total). Continue with ``resume=out_dir``."""

    def __init__(self, checkpoint: Path, out_dir: Path, step: int, steps: int):
        super().__init__(f"interrupted at step {step} of {steps}; state saved to {checkpoint}")
        self.checkpoint, self.out_dir, self.step, self.steps = checkpoint, out_dir, step, steps


@dataclass
class ImageTo3DResult:
    """Paths of the written files (None when not written) and the last step's losses."""

    out_dir: Path
    obj: Optional[Path] = None
    mtl: Optional[Path] = None
    texture: Optional[Path] = None
    glb: Optional[Path] = None
    ply: Optional[Path] = None
    mp4: Optional[Path] = None
    gif: Optional[Path] = None
    preview: Optional[Path] = None
    checkpoint: Optional[Path] = None
    losses: dict = field(default_factory=dict)
    steps: int = 0
    timings: dict = field(default_factory=dict)
    num_vertices: int = 0
    num_faces: int = 0
    #: elevation of the reference camera, degrees, and the estimate behind it when ``input_elevation="auto"``
    input_elevation: Optional[float] = None
    elevation_estimate: Optional[dict] = None
    cancelled: bool = False  # stopped by ``should_stop`` (checkpoint saved, nothing exported)


# ----- export ------------------------------------------------------------------------------------------------
def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def export_results(trainer: ImageTo3DTrainer, out_dir: Path, result: ImageTo3DResult, progress: bool = True):
    """Mesh (OBJ+MTL+texture, GLB, PLY with vertex colours), turntable MP4 + GIF and a preview grid, through the
    representation's ``extract_mesh``, ``albedo`` and ``render_chunked`` only, from the input camera of
    ``cfg.reference`` (files are +Y up with the input view's side toward +Z, :mod:`zero123.camera`)."""
    from ..export import bake_texture, image_grid, vertex_colors
    from ..export.writers import write_gif, write_glb, write_mp4, write_obj, write_ply, write_png

    ex, rc = trainer.cfg.export, trainer.cfg.reference
    rep = trainer.representation
    t0 = time.perf_counter()
    mesh = rep.extract_mesh(ex.mesh)
    if len(mesh.faces) == 0:
        raise Zero123Error("marching cubes found no surface: the reconstruction is empty")
    if ex.max_faces and len(mesh.faces) > ex.max_faces:
        mesh = mesh.simplify_quadric_decimation(face_count=ex.max_faces)
    t1 = time.perf_counter()

    albedo_fn = rep.albedo
    textured = bake_texture(mesh, albedo_fn, ex.texture_size)
    t2 = time.perf_counter()
    front = rc.azimuth
    files = write_obj(textured, out_dir / "model.obj", front)
    result.obj = files["obj"]
    result.mtl = next((p for n, p in files.items() if n.endswith(".mtl")), None)
    result.texture = next((p for n, p in files.items() if n.endswith((".png", ".jpg"))), None)
    result.glb = write_glb(textured, out_dir / "model.glb", front)
    colored = mesh.copy()
    colored.visual.vertex_colors = vertex_colors(mesh, albedo_fn)
    result.ply = write_ply(colored, out_dir / "model.ply", front)
    result.num_vertices, result.num_faces = len(mesh.vertices), len(mesh.faces)
    t3 = time.perf_counter()

    # turntable
    cams = turntable_cameras(ex.video_frames, rc.elevation, rc.distance, rc.fovy, start_azimuth=rc.azimuth)
    frames = rep.render_chunked(cams, ex.video_size, shading="albedo", max_images=8).rgb
    frames = _to_uint8(frames)
    result.mp4 = write_mp4(frames, out_dir / "turntable.mp4", fps=ex.video_fps)
    idx = np.linspace(0, len(frames), num=min(ex.gif_frames, len(frames)), endpoint=False).astype(int)
    gif = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float()
    if ex.gif_size != ex.video_size:
        gif = F.interpolate(gif, (ex.gif_size, ex.gif_size), mode="area")
    result.gif = write_gif(gif.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy(),
                           out_dir / "turntable.gif", fps=max(1, ex.video_fps // 2))
    t4 = time.perf_counter()

    # preview: input + 4 views (albedo) / normals
    pc = turntable_cameras(4, rc.elevation, rc.distance, rc.fovy, start_azimuth=rc.azimuth)
    pv = rep.render_chunked(pc, ex.preview_size, shading="albedo", with_normals=True, max_images=4)
    ref = trainer.reference
    inp = torch.where(ref.mask, ref.rgb, torch.ones_like(ref.rgb))[0].permute(2, 0, 1)[None]
    inp = F.interpolate(inp, (ex.preview_size, ex.preview_size), mode="area")[0].permute(1, 2, 0)
    normals = pv.comp_normal + (1 - pv.opacity)  # white background
    grid = image_grid([[_to_uint8(inp)] + [_to_uint8(x) for x in pv.rgb],
                       [np.full((ex.preview_size, ex.preview_size, 3), 255, np.uint8)]
                       + [_to_uint8(x) for x in normals]])
    result.preview = write_png(grid, out_dir / "preview.png")
    result.timings.update({"mesh_s": t1 - t0, "texture_s": t2 - t1, "write_s": t3 - t2, "video_s": t4 - t3,
                           "preview_s": time.perf_counter() - t4})
    return result


# ----- entry point -------------------------------------------------------------------------------------------
def load_guidance_model(checkpoint=None, *, variant=None, device=None, dtype=None, original_config=None):
    """The Zero123 model that ``to3d`` guides with (``checkpoint`` None: the bundled one), on ``device`` (default:
    CUDA when available) in ``dtype`` (default fp16 on CUDA, fp32 on CPU), inference-optimised on CUDA (the
    single-token cross-attention; UNet and VAE stay contiguous: SDS took 84.6 / 68.8 / 57.6 ms a step per stage
    contiguous against 94.9 / 79.0 / 61.8 ms channels_last on an H200, ``bench/RESULTS.md``)."""
    from ..loading import load_model

    dev = resolve_device(device)
    model = load_model(checkpoint, variant=variant, device=dev, dtype=resolve_dtype(dtype, dev),
                       original_config=original_config)
    if dev.type == "cuda":
        from ..models.optimizations import optimize_for_inference

        optimize_for_inference(model, channels_last=False)
    return model


def to3d(image, checkpoint=None, out_dir="out", *, preset: str = "auto", steps: Optional[int] = None,
         seed: int = 0, device=None, dtype=None, resume=None, input_elevation: Optional[float | str] = None,
         progress: bool = True, model=None, config: Optional[ImageTo3DConfig] = None,
         export: bool = True, matting_model=None, mask=None, segmentation: str = "auto",
         variant: Optional[str] = None, replace_outputs: bool = True,
         original_config=None, callback: Optional[Callable[[int, int, dict], None]] = None,
         should_stop: Optional[Callable[[], bool]] = None, representation: Optional[str] = None,
         max_memory: Optional[float] = None) -> ImageTo3DResult:
    """Turn one object image into a textured mesh and a turntable video.

    Args:
        image: path, PIL image or array of the object (RGBA with alpha, or on a plain background).
        checkpoint: Zero123-family checkpoint (file or diffusers folder); None = the bundled default model.
        out_dir: output folder (created). Files: ``model.obj/.mtl`` + texture, ``model.glb``, ``model.ply``,
            ``turntable.mp4``, ``turntable.gif``, ``preview.png``, ``input_rgba.png``, ``checkpoints/state.pt``,
            ``result.json``. Checked before any model work (``zero123.utils.outputs``): an earlier to3d output
            there is replaced whole, other files are refused; ``resume`` from ``out_dir`` continues in place.
        preset: ``auto`` (on a GPU ``bundled`` for the bundled model, ``default`` for others; ``cpu`` on a CPU),
            ``default`` (the recipe, 600 steps), ``fast``, ``bundled`` (the bundled 128 px model on a GPU), ``cpu``
            (minutes on a CPU with the small bundled model) or ``tiny`` (CPU tests).
        steps: override the preset's number of steps (schedules are compressed/stretched to fit).
        seed: seed of the representation's initialisation and every random draw.
        device, dtype: for the diffusion model (default CUDA + fp16 when available, else CPU + fp32); the
            representation is always float32.
        resume: a previous run's out dir (or its ``state.pt``): continue from its last checkpoint with its
            config (``preset`` is then ignored; ``steps`` may extend the run).
        input_elevation: elevation of the input photo in degrees (sets ``reference.elevation``; None keeps the
            config's, 5 in every preset, the recipe's), or ``"auto"``: estimated with the model
            (``zero123.elevation.estimate_input_elevation``; printed when ``progress``). A resumed run keeps its own.
        model: an already loaded ``Zero123Model`` (then ``checkpoint``/``device``/``dtype`` are ignored).
        config: a full :class:`ImageTo3DConfig` instead of a preset.
        export: write the mesh/video files after training.
        matting_model, mask, segmentation: the photo's foreground (see ``zero123.preprocessing``): an ONNX
            salient-object model (path or callable), the user's own mask (path/PIL/array of the photo's size), and
            the method (``auto``: alpha, else the plain-background rule when the border is plain, else the
            built-in background removal; ``plain``, ``builtin``, ``matting``). The mask is written as ``mask.png``.
        variant: ``"zero123"`` or ``"stable_zero123"``: the checkpoint's camera conditioning (default: from the
            folder's config or the file name, as ``zero123 views --variant``).
        replace_outputs: False writes into ``out_dir`` as it is, beside other files (``text_to_3d`` uses it for
            its own folder).
        original_config: the LDM yaml of a single-file ``checkpoint`` (sizes its tensors do not determine).
        callback: called after every step as ``callback(step, total, losses)`` (``step`` 1-based, losses floats).
        max_memory: GiB of GPU memory the run may use (default: the GPU's free memory; ``inf``: no bound; on a
            CPU: no bound unless given): the renders are back-propagated in parts sized by
            :class:`zero123.utils.memory.MemoryPlan` (the same gradient), and a run that cannot fit is a one-line
            error naming ``--max-memory`` before the first step.
        should_stop: polled after every step (e.g. ``threading.Event().is_set``); when it returns True the run
            saves its checkpoint and returns early with ``cancelled=True`` and nothing exported (``resume``
            continues it exactly).
        representation: ``"nerf"`` (default) or ``"gaussians"`` (3D Gaussians, DreamGaussian's schedule): picks
            the preset family (``preset_config(..., representation=)``); with ``config`` it must agree with
            ``config.representation``; a resumed run keeps its own.
    Returns:
        :class:`ImageTo3DResult`. Ctrl-C saves the state and raises :class:`Interrupted` (a ``KeyboardInterrupt``).
    """
    from tqdm.auto import tqdm

    from ..utils.atomic import reset_folder
    from ..utils.outputs import TEXT_TO_3D_OUTPUTS, TO3D_OUTPUTS, check_output_dir, is_within, remove_outputs

    out_dir = Path(out_dir).expanduser()
    in_place = resume is not None and is_within(resume, out_dir)
    # a text-to-3d folder (rerun of its 3D stage): its images are kept, to3d's own earlier files replaced
    shared = (out_dir / "text_to_3d.json").is_file()
    out_status = check_output_dir(out_dir, TEXT_TO_3D_OUTPUTS if shared else TO3D_OUTPUTS,
                                  keep=in_place or not replace_outputs)
    if variant is not None and variant not in ("zero123", "stable_zero123"):
        raise Zero123Error(f"unknown variant {variant!r}: use zero123 or stable_zero123")
    image_arg = image
    if isinstance(image, (str, Path)):
        from ..preprocessing import load_image

        image = load_image(image)  # a bad image fails now, not after loading the model
    dev = model.device if model is not None else resolve_device(device)
    state = load_checkpoint(resume) if resume is not None else None
    auto_elevation = False
    if state is not None:
        cfg = ImageTo3DConfig.from_dict(state["config"])
        if steps is not None:
            cfg.steps = int(steps)
        cfg.validate()
    else:
        from ..loading import is_bundled_model

        cfg = config if config is not None else preset_config(preset, steps, device=dev,
                                                              representation=representation,
                                                              bundled=is_bundled_model(checkpoint, model))
        if representation is not None and cfg.representation != representation:
            raise Zero123Error(f"representation {representation!r} given but the config's is "
                               f"{cfg.representation!r}")
        if config is not None and steps is not None:
            cfg.steps = int(steps)
        cfg.validate()
        from ..elevation import is_auto

        auto_elevation = is_auto(input_elevation)  # estimated once the input is prepared (never on resume)
        if input_elevation is not None and not auto_elevation:
            from ..camera import check_elevation

            if isinstance(input_elevation, str):
                raise Zero123Error(f"input elevation must be degrees or 'auto', got {input_elevation!r}")
            check_elevation(float(input_elevation), "input elevation")
            cfg.reference.elevation = float(input_elevation)

    if mask is not None or isinstance(matting_model, (str, Path)):  # bad foreground inputs fail before loading
        from ..preprocessing import _as_pil, load_mask, resolve_matting

        mask = None if mask is None else load_mask(mask, _as_pil(image).size)
        matting_model = resolve_matting(matting_model)
    from ..utils.memory import MemoryPlan, resident_bytes, resolve_budget

    budget = resolve_budget(max_memory, dev)  # checked before the model is loaded
    if model is None:
        model = load_guidance_model(checkpoint, variant=variant, device=dev, dtype=dtype,
                                    original_config=original_config)
    elif variant is not None and getattr(model.variant, "value", model.variant) != variant:
        raise Zero123Error(f"variant {variant!r} given but the loaded model is {model.variant.value}")
    model.eval()
    memory = MemoryPlan(budget, model.image_size, torch.empty((), dtype=model.dtype).element_size())
    memory.limits(resident_bytes(model.device, [model]), max(cfg.cameras.batch_sizes))  # fits? (a one-line error)
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        t_start = time.perf_counter()
        reference = prepare_reference(image, cfg.reference.image_size, model.image_size, cfg.reference.recentre,
                                      matting_model=matting_model, mask=mask, segmentation=segmentation)
        estimate = None
        if auto_elevation:
            from ..elevation import describe, estimate_input_elevation

            estimate = estimate_input_elevation(model, reference.condition, seed=seed)
            cfg.reference.elevation = estimate.degrees
            if progress:
                print(describe(estimate), flush=True)
        same_input = isinstance(image_arg, (str, Path)) and (out_dir / INPUT_RGBA_NAME).is_file() and \
            (out_dir / INPUT_RGBA_NAME).samefile(image_arg)
        if out_status == "replace" and shared:
            remove_outputs(out_dir, TO3D_OUTPUTS, keep=(INPUT_RGBA_NAME,) if same_input else ())
        elif out_status == "replace":
            reset_folder(out_dir)  # an earlier run's files are replaced whole, never mixed with this run's
        out_dir.mkdir(parents=True, exist_ok=True)
        from ..export.writers import write_png

        if not (same_input and (out_dir / INPUT_RGBA_NAME).exists()):  # the input itself may be DIR/input_rgba.png
            write_png(np.asarray(reference.rgba_image.convert("RGBA")), out_dir / INPUT_RGBA_NAME)
        if reference.mask_image is not None:
            write_png(np.asarray(reference.mask_image), out_dir / "mask.png")
        from ..guidance import build_guidance
        from ..representations import build_representation

        representation = build_representation(cfg, model.device, seed=seed)
        trainer = ImageTo3DTrainer(representation, build_guidance(cfg, model, reference), reference, cfg, seed=seed,
                                   memory=memory)
        if state is not None:
            trainer.load_state_dict(state)
        ckpt = out_dir / "checkpoints" / CHECKPOINT_NAME
        result = ImageTo3DResult(out_dir=out_dir, input_elevation=float(cfg.reference.elevation),
                                 elevation_estimate=estimate.as_dict() if estimate else None)
        guided = trainer.guidance.loss_name
        bar = tqdm(total=cfg.steps, initial=trainer.step, desc="to3d", unit="step", disable=not progress,
                   dynamic_ncols=True)
        t_train = time.perf_counter()
        try:
            while trainer.step < cfg.steps:
                losses = trainer.train_step()
                bar.update(1)
                bar.set_postfix({"loss": f"{losses['loss']:.4g}", guided: f"{losses[f'z/{guided}']:.3g}",
                                 "stage": cfg.stage(trainer.step - 1)})
                if callback is not None:
                    callback(trainer.step, cfg.steps, losses)
                if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.steps:
                    trainer.save(ckpt)
                if should_stop is not None and trainer.step < cfg.steps and should_stop():
                    trainer.save(ckpt)
                    result.cancelled = True
                    break
        except KeyboardInterrupt:
            trainer.save(ckpt)
            bar.close()
            raise Interrupted(ckpt, out_dir, trainer.step, cfg.steps) from None
        bar.close()
        result.timings["train_s"] = time.perf_counter() - t_train
        result.checkpoint = ckpt if ckpt.exists() else None
        result.losses = dict(trainer.last_losses)
        result.steps = trainer.step
        if result.cancelled:
            return result
        if export:
            export_results(trainer, out_dir, result, progress)
        result.timings["total_s"] = time.perf_counter() - t_start
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
        from ..export.writers import atomic_write_bytes

        atomic_write_bytes(out_dir / "result.json", (json.dumps(summary, indent=2) + "\n").encode())
        return result
    finally:
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)


__all__ = ["to3d", "Interrupted", "ImageTo3DResult", "ImageTo3DTrainer", "ReferenceImage", "prepare_reference",
           "condition_image", "export_results", "load_checkpoint", "checkpoint_path", "load_guidance_model"]
