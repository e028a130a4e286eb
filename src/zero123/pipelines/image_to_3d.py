"""Image to 3D: one object photo -> textured mesh (OBJ/GLB/PLY) + turntable video, by SDS with a Zero123 model.

threestudio's ``stable-zero123`` recipe (see :mod:`zero123.pipelines.image_to_3d_config`), without custom CUDA:
a hash-grid NeRF (:mod:`zero123.fields`) is rendered (:mod:`zero123.rendering.volume`) from random cameras and
optimised with score distillation from the diffusion model (:mod:`zero123.guidance.sds`) plus the reference-view
RGB/mask losses and regularisers; then marching cubes, a baked UV texture and videos (:mod:`zero123.export`).

Each training step, as threestudio's ``zero123-system`` with ``ref_or_zero123: accumulate``:
  * random views: ``lambda_sds * SDS + regularisers (orient, 2D/3D normal smoothness, sparsity, opaque)``;
  * the reference view (elevation ``input_elevation``, azimuth 0, distance 3.8, fovy 20):
    ``lambda_rgb * MSE(rgb) + lambda_mask * MSE(mask) + regularisers (no sparsity)``;
  * one Adam step on the sum (the two parts are back-propagated one after the other, which gives the same
    gradient with half the peak memory).

Runs are resumable: ``<out>/checkpoints/state.pt`` (field, occupancy grid, optimiser, random-generator states,
step, config) is written every ``checkpoint_every`` steps and on Ctrl-C; ``resume=<out dir or file>`` continues
and gives exactly the steps an uninterrupted run would have taken (same seed, same device).
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
from ..fields import NeRFField, OccupancyGrid
from ..guidance.losses import mask_loss, reference_rgb_loss, regularisers
from ..guidance.sds import SDSGuidance
from ..rendering.cameras import orbit_cameras, sample_cameras, turntable_cameras
from ..rendering.volume import render, render_chunked
from ..utils.device import resolve_device, resolve_dtype
from .image_to_3d_config import ImageTo3DConfig, preset_config

CHECKPOINT_NAME = "state.pt"
CHECKPOINT_VERSION = 1
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


# ----- input -------------------------------------------------------------------------------------------------
@dataclass
class ReferenceImage:
    """The prepared input: ``rgb`` ``[1,S,S,3]`` in [0,1] (colours of the recentred RGBA, not composited),
    ``mask`` ``[1,S,S,1]`` bool (alpha > 0.5), ``condition`` ``[1,3,s,s]`` in [-1,1] on white at model size."""

    rgb: torch.Tensor
    mask: torch.Tensor
    condition: torch.Tensor
    rgba_image: object  # PIL image
    mask_image: object = None  # PIL "L" image: the foreground mask of the (downscaled) photo


def condition_image(rgba: np.ndarray, size: int) -> torch.Tensor:
    """threestudio's input view (``stable_zero123_guidance.py`` ``prepare_embeddings``): RGBA uint8 ``[H,W,4]``
    -> ``cv2.resize(..., (size, size), INTER_AREA)`` -> ``/255`` in float32 -> composited on white in float,
    ``rgb * a + (1 - a)`` -> ``[1,3,size,size]`` in [-1,1]. (Compositing in uint8 first, as PIL does, changes the
    threestudio fixture's concat latent by 2.8e-3 relative: ``bench/input_view_prep.py``.)"""
    import cv2

    x = cv2.resize(np.ascontiguousarray(rgba), (size, size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(x.astype(np.float32) / 255.0)
    rgb = x[..., :3] * x[..., 3:] + (1 - x[..., 3:])
    return (rgb * 2 - 1).permute(2, 0, 1)[None].contiguous()


def prepare_reference(image, size: int, model_size: int, recentre: bool = True, *, matting_model=None, mask=None,
                      segmentation: str = "auto") -> ReferenceImage:
    """Build the reference-view targets (``size`` px) and the model's input view (``model_size`` px, by
    :func:`condition_image`). ``image``: path, PIL image or array; ``segmentation``, ``mask``, ``matting_model``:
    how the foreground is found (``prepare_input_image``; with ``recentre=True``).

    ``recentre=True``: segment/recentre with :mod:`zero123.preprocessing` first (object at 0.8 of the frame, the
    framing threestudio's own ``preprocess_image.py`` produces), so raw photos work; an RGBA file already framed
    that way at ``size`` px comes out unchanged, so the input view is then threestudio's exactly.
    ``recentre=False``: threestudio's input, an RGBA image used as framed, resized with INTER_AREA."""
    import cv2
    from PIL import Image

    from ..preprocessing import _as_pil, has_alpha, prepare_input_image

    if recentre:
        prep = prepare_input_image(image, size=size, matting_model=matting_model, mask=mask, method=segmentation)
        rgba_image = prep.rgba.convert("RGBA")
        full = np.asarray(rgba_image)
        mask_image = prep.mask_image()
    else:
        pil = _as_pil(image)
        if not has_alpha(pil):
            raise Zero123Error("an input that is not recentred must be an RGBA image with its background removed")
        full = np.asarray(pil.convert("RGBA"))
        rgba_image = Image.fromarray(cv2.resize(full, (size, size), interpolation=cv2.INTER_AREA), "RGBA")
        mask_image = Image.fromarray(full[..., 3], "L")
    rgba = np.asarray(rgba_image, dtype=np.float32) / 255.0
    rgb = torch.from_numpy(rgba[..., :3].copy())[None]
    mask = torch.from_numpy(rgba[..., 3:] > 0.5)[None]
    return ReferenceImage(rgb=rgb, mask=mask, condition=condition_image(full, model_size), rgba_image=rgba_image,
                          mask_image=mask_image)


def _resize_reference(ref: ReferenceImage, res: int, device):
    rgb = ref.rgb.permute(0, 3, 1, 2)
    mask = ref.mask.permute(0, 3, 1, 2).float()
    if rgb.shape[-1] != res:
        rgb = F.interpolate(rgb, (res, res), mode="area")
        mask = F.interpolate(mask, (res, res), mode="area")
    return rgb.permute(0, 2, 3, 1).to(device), (mask.permute(0, 2, 3, 1) > 0.5).to(device)


# ----- checkpoints -------------------------------------------------------------------------------------------
def _atomic_torch_save(obj, path: Path) -> Path:
    from ..export.writers import atomic_write_with

    return atomic_write_with(path, lambda tmp: torch.save(obj, tmp))


def checkpoint_path(path) -> Path:
    """``path`` itself if it is a file, else ``<path>/checkpoints/state.pt``."""
    p = Path(path)
    return p if p.is_file() else p / "checkpoints" / CHECKPOINT_NAME


def load_checkpoint(path) -> dict:
    p = checkpoint_path(path)
    if not p.is_file():
        raise Zero123Error(f"no image-to-3D checkpoint found at {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / not a checkpoint
        raise Zero123Error(f"{p} is not a readable image-to-3D checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "field" not in state:
        raise Zero123Error(f"{p} is not an image-to-3D checkpoint of this version")
    return state


# ----- the trainer -------------------------------------------------------------------------------------------
class ImageTo3DTrainer:
    """Holds the field, occupancy grid, optimiser, guidance and random generators of one run.

    ``generator`` streams: ``cpu_gen`` (cameras, backgrounds, shading choices) and ``dev_gen`` (ray offsets,
    SDS timesteps/noise, VAE posterior samples, occupancy jitter) on the model's device.
    The diffusion model is put in eval mode and frozen (``requires_grad_(False)``): only the field is trained.
    """

    def __init__(self, model, reference: ReferenceImage, config: ImageTo3DConfig, seed: int = 0):
        model.eval().requires_grad_(False)
        self.model, self.cfg, self.reference = model, config, reference
        self.device = model.device
        torch.manual_seed(seed)  # field initialisation
        self.field = NeRFField(config.field).to(self.device)
        oc = config.occupancy
        self.occupancy = OccupancyGrid(config.field.radius, oc.resolution, oc.update_every, oc.ema_decay,
                                       oc.threshold).to(self.device)
        o = config.optimizer
        self.optimizer = torch.optim.Adam(self.field.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        self.cpu_gen = torch.Generator().manual_seed(seed)
        self.dev_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.guidance = SDSGuidance(model, reference.condition, config.sds)
        self.step = 0
        self.last_losses: dict = {}
        self._ref_cache: dict = {}

    # ----- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "step": self.step, "config": self.cfg.to_dict(),
                "field": self.field.state_dict(), "occupancy": self.occupancy.state_dict(),
                "optimizer": self.optimizer.state_dict(), "cpu_rng": self.cpu_gen.get_state(),
                "dev_rng": self.dev_gen.get_state(), "losses": dict(self.last_losses)}

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.occupancy.load_state_dict(state["occupancy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.cpu_gen.set_state(state["cpu_rng"])
        self.dev_gen.set_state(state["dev_rng"].to(torch.uint8).cpu())
        self.step = int(state["step"])
        self.last_losses = dict(state.get("losses", {}))

    def save(self, path: Path) -> Path:
        return _atomic_torch_save(self.state_dict(), path)

    # ----- one step ---------------------------------------------------------------------------------------
    def _reference_targets(self, res: int):
        if res not in self._ref_cache:
            self._ref_cache = {res: _resize_reference(self.reference, res, self.device)}
        return self._ref_cache[res]

    def _shading(self, sched_step: float):
        m = self.cfg.material
        r = torch.rand(3, generator=self.cpu_gen).tolist()
        if sched_step < m.ambient_only_steps or r[0] > m.diffuse_prob:
            return "albedo"
        return "textureless" if r[1] < m.textureless_prob else "diffuse"

    def train_step(self) -> dict:
        """One optimisation step; returns the weighted loss terms (floats)."""
        cfg, step = self.cfg, self.step
        sched = cfg.schedule_step(step)
        stage = cfg.stage(step)
        cc = cfg.cameras
        lam = cfg.losses.at(sched)
        step_size = cfg.render.step_size(cfg.field.radius)
        if step % self.occupancy.update_every == 0:
            self.occupancy.update(self.field.density, step_size, generator=self.dev_gen)
        need_normals = any(lam[k] > 0 for k in ("orient", "normal_smooth", "normal_smooth_3d"))
        perturb = cfg.normal_perturb_std if lam["normal_smooth_3d"] > 0 else 0.0
        logs = {}

        # random views: SDS + regularisers
        B, res = cc.batch_sizes[stage], cc.resolutions[stage]
        cams = sample_cameras(B, self.cpu_gen, cc.elevation_range, cc.azimuth_range, (cc.distance, cc.distance),
                              (cc.fovy, cc.fovy), cc.light_distance_range, cc.light_position_perturb)
        white = torch.rand(B, generator=self.cpu_gen) < cc.white_background_prob
        bg = torch.where(white[:, None], torch.ones(B, 3), torch.rand(B, 3, generator=self.cpu_gen))
        shading = self._shading(sched)
        ambient_ratio = cfg.material.ambient_ratio_min + (1 - cfg.material.ambient_ratio_min) * float(
            torch.rand(1, generator=self.cpu_gen))
        out = render(self.field, cams, res, occupancy=self.occupancy, background=bg, shading=shading,
                     ambient_ratio=ambient_ratio, with_normals=need_normals, normal_perturb_std=perturb,
                     settings=cfg.render, generator=self.dev_gen)
        sds = self.guidance(out.rgb, cams.elevation, cams.azimuth, cams.radius, sched, generator=self.dev_gen)
        terms = {"sds": sds.loss, **regularisers(out, with_sparsity=True)}
        loss_z = sum(lam[k] * v for k, v in terms.items())
        logs.update({f"z/{k}": v.detach() for k, v in terms.items()})
        samples = out.stats["samples"]
        del out
        if loss_z.requires_grad:
            loss_z.backward()

        # reference view: RGB + mask + regularisers
        rres = cc.reference_resolutions[stage]
        gt_rgb, gt_mask = self._reference_targets(rres)
        ref_cam = orbit_cameras(cfg.sds.input_elevation, cfg.sds.input_azimuth, cc.distance, cc.fovy)
        white1 = torch.ones(1, 3, device=self.device)
        out_r = render(self.field, ref_cam, rres, occupancy=self.occupancy, background=white1, shading="diffuse",
                       ambient_ratio=1.0, with_normals=need_normals, normal_perturb_std=perturb,
                       settings=cfg.render, generator=self.dev_gen)
        terms_r = {"rgb": reference_rgb_loss(out_r.rgb, gt_rgb, gt_mask, white1),
                   "mask": mask_loss(out_r.opacity, gt_mask), **regularisers(out_r, with_sparsity=False)}
        loss_r = sum(lam[k] * v for k, v in terms_r.items())
        logs.update({f"ref/{k}": v.detach() for k, v in terms_r.items()})
        del out_r
        if loss_r.requires_grad:
            loss_r.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        logs["loss"] = (loss_z + loss_r).detach()
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device).reshape(())
                              for v in logs.values()]).tolist()     # one device->host copy per step
        self.last_losses = dict(zip(logs.keys(), values))
        self.last_losses["samples"] = samples
        return self.last_losses


# ----- export ------------------------------------------------------------------------------------------------
def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def export_results(trainer: ImageTo3DTrainer, out_dir: Path, result: ImageTo3DResult, progress: bool = True):
    """Mesh (OBJ+MTL+texture, GLB, PLY with vertex colours), turntable MP4 + GIF and a preview grid."""
    from ..export import bake_texture, extract_mesh, image_grid, vertex_colors
    from ..export.writers import write_gif, write_glb, write_mp4, write_obj, write_ply, write_png

    cfg, ex = trainer.cfg, trainer.cfg.export
    field_, dev = trainer.field, trainer.device
    t0 = time.perf_counter()
    mesh = extract_mesh(field_, ex.mesh)
    if len(mesh.faces) == 0:
        raise Zero123Error("marching cubes found no surface: the reconstruction is empty")
    if ex.max_faces and len(mesh.faces) > ex.max_faces:
        mesh = mesh.simplify_quadric_decimation(face_count=ex.max_faces)
    t1 = time.perf_counter()

    def albedo_fn(p):
        return field_.albedo(p.to(dev))

    textured = bake_texture(mesh, albedo_fn, ex.texture_size)
    t2 = time.perf_counter()
    front = cfg.sds.input_azimuth  # files are +Y up with the input view's side toward +Z (zero123.camera)
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
    cc = cfg.cameras
    cams = turntable_cameras(ex.video_frames, cfg.sds.input_elevation, cc.distance, cc.fovy,
                             start_azimuth=cfg.sds.input_azimuth)
    frames = render_chunked(field_, cams, ex.video_size, occupancy=trainer.occupancy, settings=cfg.render,
                            shading="albedo", max_images=8).rgb
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
    pc = turntable_cameras(4, cfg.sds.input_elevation, cc.distance, cc.fovy, start_azimuth=cfg.sds.input_azimuth)
    pv = render_chunked(field_, pc, ex.preview_size, occupancy=trainer.occupancy, settings=cfg.render,
                        shading="albedo", with_normals=True)
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
    CUDA when available) in ``dtype`` (default fp16 on CUDA, fp32 on CPU), inference-optimised on CUDA."""
    from ..loading import load_model

    dev = resolve_device(device)
    model = load_model(checkpoint, variant=variant, device=dev, dtype=resolve_dtype(dtype, dev),
                       original_config=original_config)
    if dev.type == "cuda":
        from ..models.optimizations import optimize_for_inference

        optimize_for_inference(model)
    return model


def to3d(image, checkpoint=None, out_dir="out", *, preset: str = "auto", steps: Optional[int] = None,
         seed: int = 0, device=None, dtype=None, resume=None, input_elevation: Optional[float | str] = None,
         progress: bool = True, model=None, config: Optional[ImageTo3DConfig] = None,
         export: bool = True, matting_model=None, mask=None, segmentation: str = "auto",
         variant: Optional[str] = None, replace_outputs: bool = True,
         original_config=None, callback: Optional[Callable[[int, int, dict], None]] = None,
         should_stop: Optional[Callable[[], bool]] = None) -> ImageTo3DResult:
    """Turn one object image into a textured mesh and a turntable video.

    Args:
        image: path, PIL image or array of the object (RGBA with alpha, or on a plain background).
        checkpoint: Zero123-family checkpoint (file or diffusers folder); None = the bundled default model.
        out_dir: output folder (created). Files: ``model.obj/.mtl`` + texture, ``model.glb``, ``model.ply``,
            ``turntable.mp4``, ``turntable.gif``, ``preview.png``, ``input_rgba.png``, ``checkpoints/state.pt``,
            ``result.json``. Checked before any model work (``zero123.utils.outputs``): an earlier to3d output
            there is replaced whole, other files are refused; ``resume`` from ``out_dir`` continues in place.
        preset: ``auto`` (``default`` on a GPU, ``cpu`` on a CPU), ``default`` (the recipe, 600 steps), ``fast``,
            ``cpu`` (minutes on a CPU with the small bundled model) or ``tiny`` (CPU tests).
        steps: override the preset's number of steps (schedules are compressed/stretched to fit).
        seed: seed of the field initialisation and every random draw.
        device, dtype: for the diffusion model (default CUDA + fp16 when available, else CPU + fp32); the field
            is always float32.
        resume: a previous run's out dir (or its ``state.pt``): continue from its last checkpoint with its
            config (``preset`` is then ignored; ``steps`` may extend the run).
        input_elevation: elevation of the input photo in degrees (default 5, the recipe's), or ``"auto"``: estimated
            with the model (``zero123.elevation.estimate_input_elevation``; printed when ``progress``). A resumed
            run keeps its own.
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
        should_stop: polled after every step (e.g. ``threading.Event().is_set``); when it returns True the run
            saves its checkpoint and returns early with ``cancelled=True`` and nothing exported (``resume``
            continues it exactly).
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
        cfg = config if config is not None else preset_config(preset, steps, device=dev)
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
            cfg.sds.input_elevation = float(input_elevation)
        cfg.sds.input_radius = cfg.cameras.distance

    if mask is not None or isinstance(matting_model, (str, Path)):  # bad foreground inputs fail before loading
        from ..preprocessing import _as_pil, load_mask, resolve_matting

        mask = None if mask is None else load_mask(mask, _as_pil(image).size)
        matting_model = resolve_matting(matting_model)
    if model is None:
        model = load_guidance_model(checkpoint, variant=variant, device=dev, dtype=dtype,
                                    original_config=original_config)
    elif variant is not None and getattr(model.variant, "value", model.variant) != variant:
        raise Zero123Error(f"variant {variant!r} given but the loaded model is {model.variant.value}")
    model.eval()
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        t_start = time.perf_counter()
        reference = prepare_reference(image, cfg.reference_image_size, model.image_size, cfg.recentre_input,
                                      matting_model=matting_model, mask=mask, segmentation=segmentation)
        estimate = None
        if auto_elevation:
            from ..elevation import describe, estimate_input_elevation

            estimate = estimate_input_elevation(model, reference.condition, seed=seed)
            cfg.sds.input_elevation = estimate.degrees
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
        trainer = ImageTo3DTrainer(model, reference, cfg, seed=seed)
        if state is not None:
            trainer.load_state_dict(state)
        ckpt = out_dir / "checkpoints" / CHECKPOINT_NAME
        result = ImageTo3DResult(out_dir=out_dir, input_elevation=float(cfg.sds.input_elevation),
                                 elevation_estimate=estimate.as_dict() if estimate else None)
        bar = tqdm(total=cfg.steps, initial=trainer.step, desc="to3d", unit="step", disable=not progress,
                   dynamic_ncols=True)
        t_train = time.perf_counter()
        try:
            while trainer.step < cfg.steps:
                losses = trainer.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss']:.4g}", sds=f"{losses['z/sds']:.3g}",
                                stage=cfg.stage(trainer.step - 1))
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
