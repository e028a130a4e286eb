"""Text -> one object image with Stable Diffusion XL (or SDXL-Turbo), loaded only from local files.

This is the first stage of text-to-3D (the Stable Zero123 model card: "generate a single image using SDXL, then
use SDS on Stable Zero123"). The model comes from a path the user gives; nothing is ever downloaded:

* a diffusers folder (``model_index.json`` + ``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``,
  ``tokenizer/``, ``tokenizer_2/``, ``scheduler/``), e.g. a local copy of ``stabilityai/stable-diffusion-xl-base-1.0``
  or ``stabilityai/sdxl-turbo``; fp16-only copies (``*.fp16.safetensors``) are detected;
* a single ``.safetensors`` / ``.ckpt`` file in the original (SGM) layout, e.g. ``sd_xl_base_1.0.safetensors``.
  A single file holds only weights: diffusers also needs the pipeline's config folder (the same diffusers
  folder layout, the weight files may be left out) for the component configs and the two tokenizers. Pass it as
  ``config=`` (CLI ``--t2i-config``); a ``model_index.json`` beside the file is used automatically.

Presets (``PRESETS``): ``sdxl`` = 30 steps, guidance 5.0, 1024 px (diffusers' SDXL defaults, 30 steps);
``turbo`` = SDXL-Turbo's few-step sampling: 4 steps (it is distilled for 1-4), guidance 0.0 (no classifier-free
guidance, so the negative prompt is unused), 512 px. ``preset=None`` picks ``turbo`` when the model path has
"turbo" in its name.

Images come back as RGB ``PIL.Image`` of ``size x size`` pixels. Image ``i`` of a call with ``seed`` uses a CPU
``torch.Generator`` seeded ``seed + i``, so each candidate can be regenerated alone and does not depend on the
device's random number generator.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import Zero123Error

logger = logging.getLogger(__name__)

#: What the Stable Zero123 card suggests: one centred object on a plain background. ``{prompt}`` is replaced.
DEFAULT_PROMPT_TEMPLATE = "a 3D render of {prompt}, single object, centered, white background"
#: Things that make a bad SDS reference image: several objects, cut-off objects, clutter, text, cast shadows.
DEFAULT_NEGATIVE_PROMPT = ("multiple objects, cropped, cut off, out of frame, partial view, busy background, "
                           "scenery, text, watermark, shadow, blurry, low quality")

#: ``model_index.json`` components a text-to-image SDXL pipeline needs (the refiner lacks ``text_encoder``).
SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
#: A key every SDXL base / Turbo single file has: the OpenCLIP ViT-bigG text encoder (the 2nd embedder).
SDXL_SINGLE_FILE_KEY = "conditioner.embedders.1.model.positional_embedding"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class TextToImagePreset:
    """Sampling settings of a model family: steps, classifier-free guidance scale, image side in pixels."""

    name: str
    steps: int
    guidance_scale: float
    size: int
    max_steps: Optional[int] = None  # distilled models: more steps than this is outside what they were made for


PRESETS = {
    "sdxl": TextToImagePreset("sdxl", steps=30, guidance_scale=5.0, size=1024),
    "turbo": TextToImagePreset("turbo", steps=4, guidance_scale=0.0, size=512, max_steps=4),
}


def resolve_preset(model_path: str | os.PathLike | None, preset: str | None = None) -> TextToImagePreset:
    """``PRESETS[preset]``; ``None``/``"auto"``: ``turbo`` if the model's file or folder name contains "turbo"."""
    if preset is None or str(preset).lower() == "auto":
        name = Path(str(model_path or "")).expanduser()
        parts = [p.lower() for p in name.parts[-2:]]
        return PRESETS["turbo" if any("turbo" in p for p in parts) else "sdxl"]
    key = str(preset).lower().replace("-", "_")
    key = {"sdxl_turbo": "turbo", "base": "sdxl", "sdxl_base": "sdxl"}.get(key, key)
    if key not in PRESETS:
        raise Zero123Error(f"unknown text-to-image preset {preset!r}: use {', '.join(PRESETS)} or auto")
    return PRESETS[key]


def format_prompt(prompt: str, template: str | None = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The text sent to SDXL: ``template`` with ``{prompt}`` replaced by the user's (stripped) prompt.

    ``template=None`` or ``"{prompt}"`` sends the prompt unchanged. Other braces are left alone (no ``str.format``).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise Zero123Error("the text prompt is empty: describe the object, e.g. \"a friendly dog\"")
    if template is None:
        return prompt.strip()
    if "{prompt}" not in template:
        raise Zero123Error(f"--prompt-template must contain {{prompt}} (where the object's description goes), "
                           f"got {template!r}")
    return template.replace("{prompt}", prompt.strip())


# ----- loading ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_loading():
    """Silence diffusers' / transformers' own loading bars and info logs (the caller shows one progress display)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    d_bar, t_bar = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    d_lvl, t_lvl = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        (dlog.enable_progress_bar if d_bar else dlog.disable_progress_bar)()
        (tlog.enable_progress_bar if t_bar else tlog.disable_progress_bar)()
        dlog.set_verbosity(d_lvl)
        tlog.set_verbosity(t_lvl)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_sdxl_folder(folder: Path) -> dict:
    """Read ``folder/model_index.json`` and check it describes a text-to-image SDXL pipeline; returns the index."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        inner = sorted(p.parent.name for p in folder.glob("*/model_index.json"))
        hint = f" (did you mean {folder / inner[0]}?)" if inner else ""
        raise Zero123Error(f"{folder} is not a diffusers pipeline folder: it has no model_index.json{hint}")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise Zero123Error(f"{index_path} is not readable JSON ({_first_line(exc)})") from None
    cls = str(index.get("_class_name", "?"))
    missing = [c for c in SDXL_COMPONENTS if not (isinstance(index.get(c), list) and index[c][0])]
    if not cls.startswith("StableDiffusionXL") or missing:
        why = f"it lacks {', '.join(missing)}" if missing else "wrong pipeline class"
        raise Zero123Error(f"{folder} holds a {cls}, not a text-to-image SDXL pipeline ({why}); "
                           "give an SDXL base or SDXL-Turbo folder")
    unet_cfg = folder / "unet" / "config.json"
    if unet_cfg.is_file():
        try:
            cfg = json.loads(unet_cfg.read_text())
        except (OSError, ValueError) as exc:
            raise Zero123Error(f"{unet_cfg} is not readable JSON ({_first_line(exc)})") from None
        if cfg.get("addition_embed_type") != "text_time" or cfg.get("in_channels", 4) != 4:
            raise Zero123Error(f"{folder}: its UNet is not an SDXL text-to-image UNet (addition_embed_type="
                               f"{cfg.get('addition_embed_type')!r}, in_channels={cfg.get('in_channels')})")
    return index


def _weights_variant(folder: Path) -> Optional[str]:
    """``"fp16"`` when the UNet has only ``*.fp16.*`` weight files (a half-precision-only copy), else ``None``."""
    unet = folder / "unet"
    if not unet.is_dir():
        return None
    names = [p.name for p in unet.iterdir()]
    plain = [n for n in names if n.startswith("diffusion_pytorch_model") and n.count(".") == 1]
    fp16 = [n for n in names if n.startswith("diffusion_pytorch_model.fp16.")]
    return "fp16" if fp16 and not plain else None


def _single_file_keys(path: Path) -> Optional[set]:
    """Tensor names of a ``.safetensors`` file without reading the tensors; ``None`` for pickle formats."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except Exception as exc:  # safetensors raises its own error types for truncated / foreign files
        raise Zero123Error(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None


def check_model_path(path: str | os.PathLike | None, config: str | os.PathLike | None = None
                     ) -> tuple[Path, Optional[Path]]:
    """Cheap checks (no weights read) that ``path`` is an SDXL folder or single file; returns ``(path, config)``.

    For a single file, ``config`` defaults to the file's folder when it has ``model_index.json``; a single file
    without a config folder is refused (diffusers would otherwise try to download the configs).
    """
    if path is None or str(path).strip() == "":
        raise Zero123Error("no text-to-image model given: pass --t2i-model PATH (an SDXL / SDXL-Turbo diffusers "
                           "folder or .safetensors file)")
    path = Path(path).expanduser()
    if not path.exists():
        raise Zero123Error(f"text-to-image model not found: {path} (give an SDXL diffusers folder or "
                           ".safetensors file)")
    if path.is_dir():
        check_sdxl_folder(path)
        return path, None
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise Zero123Error(f"{path} is not an SDXL model: expected a diffusers folder or a "
                           f"{'/'.join(SINGLE_FILE_SUFFIXES)} file")
    if path.stat().st_size == 0:
        raise Zero123Error(f"{path} is empty (0 bytes)")
    keys = _single_file_keys(path)
    if keys is not None and SDXL_SINGLE_FILE_KEY not in keys:
        raise Zero123Error(f"{path} is not an SDXL checkpoint (no OpenCLIP-bigG text encoder "
                           f"'{SDXL_SINGLE_FILE_KEY}'); give an SDXL base or SDXL-Turbo file")
    if config is None and (path.parent / "model_index.json").is_file():
        config = path.parent
    if config is None:
        raise Zero123Error(
            f"{path} is a single-file checkpoint: it needs its diffusers config folder (model_index.json, "
            "component configs and both tokenizers, e.g. a local copy of stable-diffusion-xl-base-1.0 "
            "or sdxl-turbo without weights); pass it with --t2i-config DIR (nothing is downloaded)")
    config = Path(config).expanduser()
    if not config.is_dir():
        raise Zero123Error(f"text-to-image config folder not found: {config}")
    check_sdxl_folder(config)
    return path, config


def load_sdxl_pipeline(path: str | os.PathLike, *, config: str | os.PathLike | None = None, device=None,
                       dtype=None, cpu_offload: bool = False):
    """A diffusers ``StableDiffusionXLPipeline`` from local files only, moved to ``device``.

    path: diffusers SDXL folder or single ``.safetensors``/``.ckpt`` file (then ``config`` = its diffusers config
    folder, or a folder with ``model_index.json`` beside the file). device: default CUDA when available.
    dtype: default fp16 on CUDA, fp32 on CPU. cpu_offload: ``enable_model_cpu_offload`` (each network moves to
    the GPU only while it runs: SDXL then fits in ~5 GB of GPU memory); ignored on CPU.
    """

    path, config = check_model_path(path, config)
    from ..utils.device import resolve_device, resolve_dtype

    device = resolve_device(device)
    kwargs = dict(torch_dtype=resolve_dtype(dtype, device), local_files_only=True)
    try:
        from diffusers import StableDiffusionXLPipeline

        with quiet_loading(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if config is None:
                pipe = StableDiffusionXLPipeline.from_pretrained(str(path), variant=_weights_variant(path), **kwargs)
            else:
                pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(config), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
        raise Zero123Error(f"could not load an SDXL model from {path}: {_first_line(exc)}") from None
    if cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        if cpu_offload:
            logger.warning("--cpu-offload only applies on a CUDA device; running on %s", device)
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----- generation -------------------------------------------------------------------------------------------------
@dataclass
class TextToImageSettings:
    """Everything that decides the images besides the model: the prompt text, sampling settings and seed."""

    prompt: str
    full_prompt: str
    negative_prompt: Optional[str]
    steps: int
    guidance_scale: float
    size: int
    seed: int
    preset: str

    def to_dict(self) -> dict:
        return asdict(self)


class TextToImage:
    """An SDXL pipeline plus its preset. ``generate(prompt, num_images=N, seed=s)`` -> N RGB ``PIL.Image``."""

    def __init__(self, pipeline, preset: TextToImagePreset | str = "sdxl", check_finite: bool = True):
        self.pipeline = pipeline
        self.preset = PRESETS[preset] if isinstance(preset, str) else preset
        self.check_finite = check_finite  # False only for benchmarks with random weights

    @classmethod
    def from_pretrained(cls, path, *, config=None, preset: str | None = None, device=None, dtype=None,
                        cpu_offload: bool = False) -> "TextToImage":
        """Load with ``load_sdxl_pipeline`` (local files only); ``preset=None`` detects SDXL-Turbo by name."""
        p = resolve_preset(path, preset)
        return cls(load_sdxl_pipeline(path, config=config, device=device, dtype=dtype, cpu_offload=cpu_offload), p)

    def settings(self, prompt: str, *, seed: int = 0, steps: int | None = None, guidance_scale: float | None = None,
                 size: int | None = None, negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
                 prompt_template: str | None = DEFAULT_PROMPT_TEMPLATE) -> TextToImageSettings:
        """Validated settings: preset values where an argument is ``None``."""
        p = self.preset
        steps = p.steps if steps is None else int(steps)
        guidance = p.guidance_scale if guidance_scale is None else float(guidance_scale)
        size = p.size if size is None else int(size)
        if steps < 1:
            raise Zero123Error(f"text-to-image steps must be >= 1, got {steps}")
        if p.max_steps is not None and steps > p.max_steps:
            logger.warning("%s is distilled for 1-%d steps; %d steps may look worse, not better", p.name,
                           p.max_steps, steps)
        if not np.isfinite(guidance) or guidance < 0:
            raise Zero123Error(f"text-to-image guidance scale must be >= 0, got {guidance}")
        if size < 64 or size % 8:
            raise Zero123Error(f"text-to-image size must be a multiple of 8 and >= 64 pixels, got {size}")
        if int(seed) < 0:
            raise Zero123Error(f"seed must be >= 0, got {seed}")
        return TextToImageSettings(prompt=prompt, full_prompt=format_prompt(prompt, prompt_template),
                                   negative_prompt=negative_prompt or None, steps=steps, guidance_scale=guidance,
                                   size=size, seed=int(seed), preset=p.name)

    def generate(self, prompt: str, *, num_images: int = 1, seed: int = 0, steps: int | None = None,
                 guidance_scale: float | None = None, size: int | None = None,
                 negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
                 prompt_template: str | None = DEFAULT_PROMPT_TEMPLATE,
                 on_step: Callable[[], None] | None = None, settings: TextToImageSettings | None = None):
        """``num_images`` RGB images ``size x size``; image ``i`` uses seed ``seed + i`` (CPU generator).

        ``on_step`` is called after every denoising step (``num_images * steps`` calls), for a progress bar.
        Raises ``Zero123Error`` when the model produces non-finite pixels (fp16 overflow: use dtype fp32).
        """
        import torch
        from PIL import Image

        if int(num_images) < 1:
            raise Zero123Error(f"number of images must be >= 1, got {num_images}")
        s = settings or self.settings(prompt, seed=seed, steps=steps, guidance_scale=guidance_scale, size=size,
                                      negative_prompt=negative_prompt, prompt_template=prompt_template)

        def _callback(pipe, step, timestep, callback_kwargs):
            if on_step is not None:
                on_step()
            return callback_kwargs

        images = []
        for i in range(int(num_images)):
            generator = torch.Generator("cpu").manual_seed(s.seed + i)
            out = self.pipeline(
                prompt=s.full_prompt,
                negative_prompt=s.negative_prompt if s.guidance_scale > 1.0 else None,
                num_inference_steps=s.steps, guidance_scale=s.guidance_scale, height=s.size, width=s.size,
                generator=generator, output_type="np", callback_on_step_end=_callback,
            )
            arr = np.asarray(out.images[0], dtype=np.float32)
            if self.check_finite and not np.isfinite(arr).all():
                raise Zero123Error("the text-to-image model produced NaN/inf pixels (half-precision overflow?); "
                                   "retry with --t2i-dtype fp32")
            arr = np.nan_to_num(arr, nan=0.0)
            images.append(Image.fromarray(np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)))
        return images

    def to(self, device):
        self.pipeline.to(device)
        return self
