"""Novel-view sampling: ``Zero123Pipeline``.

    pipe = Zero123Pipeline.from_single_file("stable_zero123.ckpt")        # or .from_pretrained(folder)
    out = pipe("chair.png", elevations=[0, 0, 30], azimuths=[90, 180, 270])
    out.images[0].save("view0.png")

Camera changes are relative to the input view: ``elevations`` / ``azimuths`` in degrees, ``radii`` in world units
(see ``zero123.camera``). Sampling is DDIM with classifier-free guidance exactly as zero123's ``DDIMSampler`` runs it
(``num_inference_steps=S`` visits ``S-1`` timesteps, see ``zero123.schedulers.ldm_ddim_timesteps``).
``timestep_spacing="diffusers"`` runs the timesteps of diffusers' community ``Zero1to3StableDiffusionPipeline``
instead (its ``DDIMScheduler``: S timesteps from ``1 + (S-1) * (1000 // S)``, 981 for 50), so that the same folder,
start noise and settings give that pipeline's sample.

``scheduler="dpmpp"`` / ``"unipc"`` samples with diffusers' DPM-Solver++ / UniPC multistep solvers instead
(``zero123.schedulers.MultistepSampler``: the models' own noise schedule, S steps = S UNet evaluations from
t = 999 down to the clean sample, deterministic): DDIM-50's quality in fewer steps (``bench/RESULTS.md``).
Classifier-free guidance stays one batched UNet call per step whichever the scheduler.

``noise_scale`` (tau, in [0, 1]) draws the start noise from ``N(0, tau^2 I)`` instead of ``N(0, I)``: low-temperature
sampling, which trades sample diversity (and fine texture) for views nearer the model's most likely one. 1 is the
standard sampler, and the default for every checkpoint except where its folder's ``sampling.json`` recommends
another value (the bundled model's does: see its model card).

``input_elevation="auto"`` estimates the input photo's elevation with the model itself
(``zero123.elevation.estimate_input_elevation``) for variants that condition on it (Stable Zero123); the estimate is
returned as ``output.elevation_estimate``. For Zero123 (relative cameras only) it means 0 and costs nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..camera import ConditioningVariant, check_elevation
from ..errors import Zero123Error
from ..preprocessing import PreparedImage, prepare_input_image, tensor_to_images
from ..schedulers import check_sampler, check_timestep_spacing, make_sampler
from ..utils.timing import stage

#: Camera-change bounds accepted by the pipeline (Zero123 was trained on radius 1.5 .. 2.2).
MAX_ABS_DELTA_RADIUS = 1.0
STABLE_ZERO123_DEFAULT_INPUT_ELEVATION = 5.0
#: a model folder's recommended sampling settings (optional; read by ``Zero123Pipeline.from_pretrained``)
SAMPLING_FILE = "sampling.json"


def check_noise_scale(value) -> float:
    """``value`` as a float in [0, 1] (the start-noise scale tau), else a ``Zero123Error``."""
    try:
        tau = float(value)
    except (TypeError, ValueError):
        raise Zero123Error(f"noise scale must be a number in [0, 1], got {value!r}") from None
    if not (math.isfinite(tau) and 0.0 <= tau <= 1.0):
        raise Zero123Error(f"noise scale must be in [0, 1] (1 = standard sampling), got {value!r}")
    return tau


def read_sampling_defaults(folder) -> dict:
    """The ``sampling.json`` of a model folder as ``{"noise_scale": tau}``; ``{}`` when the folder has none."""
    path = Path(folder) / SAMPLING_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise Zero123Error(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or set(data) - {"noise_scale"}:
        raise Zero123Error(f"{path}: expected {{\"noise_scale\": tau}}, got {data!r}")
    return {"noise_scale": check_noise_scale(data["noise_scale"])} if "noise_scale" in data else {}


@dataclass
class Zero123PipelineOutput:
    """``images``: list of PIL RGB (``output_type='pil'``) or a tensor ``[N,3,H,W]`` in [0,1] (``'pt'``);
    ``latents``: final scaled latents ``[N,4,h,w]``; ``input_image``: the prepared input (None for tensor input)."""

    images: list | torch.Tensor
    latents: torch.Tensor
    input_image: PreparedImage | None = None
    #: the ``zero123.elevation.ElevationEstimate`` used when ``input_elevation="auto"`` asked for one, else None
    elevation_estimate: object | None = None


class Zero123Pipeline:
    """Zero123-family novel-view sampler around a ``Zero123Model``."""

    def __init__(self, model, noise_scale: float = 1.0, timestep_spacing: str = "zero123", scheduler: str = "ddim"):
        self.model = model
        #: the start-noise scale used when a call gives none (see the module docstring)
        self.noise_scale = check_noise_scale(noise_scale)
        #: the DDIM timesteps used when a call gives none: ``zero123`` (the original's) or ``diffusers``
        self.timestep_spacing = check_timestep_spacing(timestep_spacing)
        #: the sampler used when a call gives none: ``ddim``, ``dpmpp`` or ``unipc`` (``zero123.schedulers``)
        self.scheduler = check_sampler(scheduler)
        self._graphed = None  # optional CUDA-graph sampler, see enable_cuda_graph()

    # ----- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model) -> "Zero123Pipeline":
        return cls(model)

    @classmethod
    def from_single_file(cls, path, variant=None, dtype=None, device=None, use_ema: bool = True,
                         original_config=None):
        """An original LDM ``.ckpt`` / ``.safetensors`` (EMA weights used when present). ``original_config``: its
        LDM yaml, for the sizes the tensors do not determine (diffusers' ``from_single_file`` convention)."""
        from ..loading import load_ldm_checkpoint

        return cls(load_ldm_checkpoint(path, variant=variant, use_ema=use_ema, dtype=dtype, device=device,
                                       original_config=original_config)[0])

    @classmethod
    def from_pretrained(cls, folder=None, variant=None, dtype=None, device=None, weights_variant=None):
        """A diffusers-format folder (any layout of ``zero123.loading.folder_layouts``); ``None`` loads the model
        bundled with the package. ``weights_variant``: see ``zero123.loading.load_diffusers_folder``. The folder's
        ``sampling.json`` (if any) sets the default ``noise_scale``."""
        from ..loading import bundled_model_path, load_model

        model = load_model(folder, variant=variant, dtype=dtype, device=device, weights_variant=weights_variant)
        return cls(model, **read_sampling_defaults(bundled_model_path() if folder is None else folder))

    def save_pretrained(self, folder, half: bool = False):
        """The model as a diffusers-format folder, plus ``sampling.json`` when ``noise_scale`` is not 1 (written with
        the folder, so it is never there without it)."""
        from ..loading import save_pretrained

        extra = {SAMPLING_FILE: json.dumps({"noise_scale": self.noise_scale}) + "\n"} if self.noise_scale != 1.0 else {}
        return save_pretrained(self.model, folder, half=half, extra_files=extra)

    def to(self, device=None, dtype=None) -> "Zero123Pipeline":
        self.model.to(device=device, dtype=dtype)
        self._graphed = None
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    def enable_cuda_graph(self, enabled: bool = True, capture_after: int = 0) -> "Zero123Pipeline":
        """Capture the whole denoising loop in one CUDA graph per (views, steps, guidance, eta) and replay it
        afterwards (the loop is launch-bound on an H100): captured on first use (``capture_after=0``), or after
        that many eager runs of the configuration (a capture costs about two loops: see ``graphed_sampler``). DDIM
        and DPM-Solver++ (UniPC runs eagerly: ``MultistepSampler.graphable``). No effect on CPU."""
        from .graphed_sampler import GraphedSamplerCache

        cuda = enabled and self.device.type == "cuda"
        self._graphed = GraphedSamplerCache(self.model, capture_after) if cuda else None
        return self

    def enable_fast_path(self, compile: bool = True, capture_after: int = 0) -> "Zero123Pipeline":
        """GPU fast path measured in ``bench/RESULTS.md``: channels-last, the exact single-token cross-attention
        shortcut, fused QKV projections, ``torch.compile`` of the UNet and VAE decoder (``compile``: about a
        minute the first time, seconds once its on-disk cache is warm: ``models.optimizations.compile_cache_dir``)
        and the whole denoising loop as one CUDA graph (``capture_after``: see ``enable_cuda_graph``). On CPU only
        the exact attention shortcut applies."""
        from ..models.optimizations import compile_for_inference, fuse_qkv, optimize_for_inference

        cuda = self.device.type == "cuda"
        optimize_for_inference(self.model, channels_last=cuda)
        if cuda:
            fuse_qkv(self.model)
            if compile:
                compile_for_inference(self.model)
        return self.enable_cuda_graph(cuda, capture_after)

    # ----- inputs ------------------------------------------------------------------------------------------
    def prepare_image(self, image, matting=None, recentre: bool = True, *, matting_model=None, mask=None,
                      segmentation: str = "auto") -> PreparedImage:
        """Path / PIL / array -> recentred, white-background input at the model's image size (foreground from
        ``segmentation`` / ``mask`` / ``matting_model``: see ``zero123.preprocessing.prepare_input_image``). A
        ``PreparedImage`` (this method's own result) is returned as it is, so a caller that prepared the input once
        (e.g. to estimate its elevation first) can sample from it without segmenting the photo again."""
        if isinstance(image, PreparedImage):
            return image
        return prepare_input_image(image, size=self.model.image_size, matting=matting, recentre=recentre,
                                   matting_model=matting_model, mask=mask, method=segmentation)

    def needs_input_elevation(self) -> bool:
        """True when the model conditions on the input view's absolute elevation (Stable Zero123)."""
        return self.model.variant is ConditioningVariant.STABLE_ZERO123

    def camera_batch(self, elevations, azimuths, radii=None, input_elevation=None) -> torch.Tensor:
        """Validated camera embeddings ``[N,4]`` for camera changes (degrees, world units)."""
        elevations, azimuths = _as_list(elevations, "elevations"), _as_list(azimuths, "azimuths")
        radii = [0.0] * len(elevations) if radii is None else _as_list(radii, "radii")
        if radii and len(radii) == 1 and len(elevations) > 1:
            radii = radii * len(elevations)
        if len(elevations) != len(azimuths) or len(radii) != len(elevations):
            raise Zero123Error(f"camera lists differ in length: {len(elevations)} elevations, {len(azimuths)} "
                               f"azimuths, {len(radii)} radii")
        if not elevations:
            raise Zero123Error("no target views given")
        if input_elevation is None:
            stable = self.model.variant is ConditioningVariant.STABLE_ZERO123
            input_elevation = STABLE_ZERO123_DEFAULT_INPUT_ELEVATION if stable else 0.0
        check_elevation(input_elevation, "input elevation")
        for de, da, dr in zip(elevations, azimuths, radii):
            check_elevation(input_elevation + de, f"target elevation (input {input_elevation:g} + change {de:g})")
            if not math.isfinite(da):
                raise Zero123Error(f"azimuth change {da} is not finite")
            if not (math.isfinite(dr) and abs(dr) <= MAX_ABS_DELTA_RADIUS):
                raise Zero123Error(f"radius change {dr} out of range [-{MAX_ABS_DELTA_RADIUS:g}, "
                                   f"{MAX_ABS_DELTA_RADIUS:g}] (Zero123 was trained on radii 1.5 to 2.2)")
        return self.model.camera_embedding(elevations, azimuths, radii, input_elevation)

    # ----- sampling ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image, elevations: Sequence[float], azimuths: Sequence[float], radii=None,
                 input_elevation: float | str | None = None, num_inference_steps: int = 50, guidance_scale: float = 3.0,
                 eta: float = 0.0, generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", batch_size: int = 8, matting=None, recentre: bool = True,
                 progress: bool = True, noise_scale: float | None = None, *, matting_model=None, mask=None,
                 segmentation: str = "auto", timestep_spacing: str | None = None,
                 scheduler: str | None = None) -> Zero123PipelineOutput:
        """Sample one view per (elevation, azimuth, radius) change of ``image``.

        ``image``: path, PIL image, or a tensor ``[1,3,H,W]`` in [-1,1] already at the model's size (used as is).
        ``latents``: optional start noise ``[N,4,h,w]`` (used as given). ``batch_size`` views are sampled together.
        ``noise_scale``: tau in [0, 1] for drawn start noise; ``None``: the pipeline's ``noise_scale``.
        ``segmentation`` (auto / plain / builtin / matting), ``mask`` (the user's mask), ``matting_model`` (ONNX
        path or callable; older name ``matting``): the input's foreground, see ``zero123.preprocessing``.
        ``input_elevation``: degrees, ``None`` (5 for Stable Zero123, else 0) or ``"auto"`` (estimated, see the
        module docstring).
        ``timestep_spacing``: ``zero123`` or ``diffusers`` (module docstring; DDIM only); ``None``: the pipeline's.
        ``scheduler``: ``ddim``, ``dpmpp`` or ``unipc`` (module docstring); ``None``: the pipeline's.
        """
        from ..elevation import estimate_input_elevation, is_auto

        if output_type not in ("pil", "pt"):
            raise Zero123Error(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        noise_scale = self.noise_scale if noise_scale is None else check_noise_scale(noise_scale)
        spacing = check_timestep_spacing(timestep_spacing or self.timestep_spacing)
        scheduler = check_sampler(scheduler or self.scheduler)
        num_loop_steps = len(make_sampler(scheduler, num_inference_steps, eta, spacing=spacing))  # checks too
        auto = is_auto(input_elevation)
        if isinstance(input_elevation, str) and not auto:
            raise Zero123Error(f"input elevation must be degrees or 'auto', got {input_elevation!r}")
        camera = None if auto else self.camera_batch(elevations, azimuths, radii, input_elevation)
        prepared = None
        if isinstance(image, torch.Tensor):
            images = image
        else:
            prepared = self.prepare_image(image, matting=matting, recentre=recentre, matting_model=matting_model,
                                          mask=mask, segmentation=segmentation)
            images = prepared.tensor
        estimate = None
        if auto:
            if self.needs_input_elevation():
                estimate = estimate_input_elevation(self, images if prepared is None else prepared)
            camera = self.camera_batch(elevations, azimuths, radii, estimate.degrees if estimate else 0.0)
        images = images.to(self.device, self.model.dtype)
        results, all_latents = [], []
        with stage("encode the input (CLIP, VAE)"):
            clip_emb, concat = self.model.clip_embedding(images), self.model.concat_latent(images)
        n = camera.shape[0]
        num_batches = -(-n // batch_size)  # the bar advances once per denoising step of each batch
        bar = tqdm(total=num_batches * num_loop_steps,
                   desc="sampling views",
                   unit="step", disable=not progress, leave=False)
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            x_t = None if latents is None else latents[sl]
            with stage("denoise"):
                out = self.sample(None, camera[sl], num_inference_steps, guidance_scale, eta, generator, x_t,
                                  clip_embedding=clip_emb, concat_latent=concat, progress_bar=bar,
                                  noise_scale=noise_scale, timestep_spacing=spacing, scheduler=scheduler)
            all_latents.append(out)
            with stage("decode (VAE)"):
                results.append(((self.model.decode_latents(out).float() + 1) / 2).clamp(0, 1))
        bar.close()
        images_out = torch.cat(results)
        return Zero123PipelineOutput(images=tensor_to_images(images_out) if output_type == "pil" else images_out,
                                     latents=torch.cat(all_latents), input_image=prepared,
                                     elevation_estimate=estimate)

    @torch.no_grad()
    def sample(self, images: torch.Tensor | None, camera: torch.Tensor, num_inference_steps: int = 50,
               guidance_scale: float = 3.0, eta: float = 0.0, generator: torch.Generator | None = None,
               latents: torch.Tensor | None = None, clip_embedding=None, concat_latent=None,
               progress_bar=None, noise_scale: float = 1.0, timestep_spacing: str = "zero123",
               scheduler: str = "ddim") -> torch.Tensor:
        """The denoising loop: scaled latents ``[N,4,h,w]`` for camera ``[N,4]`` and input ``images`` ``[1|N,3,H,W]``
        (or precomputed ``clip_embedding`` / ``concat_latent``). Start noise ``latents`` (as given) or drawn from
        ``generator`` and multiplied by ``noise_scale``. ``timestep_spacing``: ``zero123`` or ``diffusers`` (DDIM);
        ``scheduler``: ``ddim``, ``dpmpp`` or ``unipc`` (each on ``zero123.schedulers.alphas_cumprod()``, the
        schedule every Zero123 checkpoint is checked against when it loads). One
        ``guided_noise`` call (one UNet pass on the ``[uncond; cond]`` batch) per step."""
        model = self.model
        token, concat = model.conditioning(images, camera.to(self.device), clip_embedding, concat_latent)
        n, h = camera.shape[0], model.unet.config.sample_size
        shape = (n, model.latent_channels, h, h)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device=_gen_device(generator, self.device))
            latents = latents * check_noise_scale(noise_scale)
        elif tuple(latents.shape) != shape:
            raise Zero123Error(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        x = latents.to(self.device, torch.float32)
        sampler = make_sampler(scheduler, num_inference_steps, eta, spacing=check_timestep_spacing(timestep_spacing))
        noises = None
        if eta > 0:
            noises = torch.randn((len(sampler),) + shape, generator=generator,
                                 device=_gen_device(generator, self.device)).to(self.device)
        graphed = None
        if self._graphed is not None and sampler.graphable:
            graphed = self._graphed.run(sampler, x, token, concat, guidance_scale, noises)  # None: run eagerly
        if graphed is not None:
            if progress_bar is not None:
                progress_bar.update(len(sampler))
            return graphed
        for i, t in enumerate(sampler.timesteps.tolist()):
            eps = model.guided_noise(x.to(model.dtype), torch.full((n,), t, device=self.device), token, concat,
                                     guidance_scale).float()
            x = sampler.step(i, x, eps, None if noises is None else noises[i])
            if progress_bar is not None:
                progress_bar.update(1)
        return x


def _gen_device(generator, fallback):
    return generator.device if generator is not None else fallback


def _as_list(values, name: str) -> list[float]:
    if isinstance(values, (int, float)):
        return [float(values)]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise Zero123Error(f"{name} must be numbers, got {values!r}") from None
