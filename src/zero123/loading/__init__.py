"""Loading and saving Zero123-family models.

* ``load_model(path)``: an LDM single file (``.ckpt``/``.safetensors``), a diffusers-format folder, or ``None``
  for the model bundled with the package. Returns a ``Zero123Model``.
* ``load_ldm_checkpoint(path)`` also returns a ``LoadReport`` saying which keys were used and which ignored, and why.
* ``save_pretrained(model, folder)`` writes the diffusers-format folder (safetensors) atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..camera import ConditioningVariant
from ..errors import CheckpointError
from ..models.configs import Zero123Config
from ..utils.device import resolve_dtype
from ..utils.timing import stage
from .int8_weights import dequantize_state_dict, quantize_state_dict
from .ldm_checkpoint import (check_sidecar, config_from_ldm, convert_openai_clip_visual, convert_unet, convert_vae,
                             detect_variant, read_original_config, read_sidecar, split_ldm_state_dict)
from .folder_layouts import (KXIC_MODEL_INDEX, META_FILE, cc_projection_config, check_projection_config,
                             folder_variant, parse_weights_variant, projection_folder, read_json, read_meta,
                             weights_file)
from .safe_io import read_checkpoint_file, read_state_dict

__all__ = ["load_model", "load_ldm_checkpoint", "load_diffusers_folder", "save_pretrained", "bundled_model_path",
           "is_bundled_model", "require_checkpoint", "LoadReport", "read_state_dict"]

BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "default_model"
COMPONENTS = ("unet", "vae", "image_encoder", "cc_projection")


@dataclass
class LoadReport:
    """What a load did: the source, variant, sizes, whether EMA weights were used, and every ignored key."""

    source: str
    format: str
    variant: str
    config: Zero123Config
    uses_ema: bool = False
    ignored: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def bundled_model_path() -> Path:
    return BUNDLED_MODEL_DIR


def require_checkpoint(path) -> Path:
    """``path`` as a Path, or a one-line :class:`CheckpointError` when nothing is there: what :func:`load_model`
    checks first, for commands that check it before other expensive work (child processes, text-to-image)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def is_bundled_model(path=None, model=None) -> bool:
    """Whether the model is the bundled one: with a ``model``, its mark from :func:`load_model` (a model built any
    other way is not); else whether ``path`` (None: the default, the bundled model) names the bundled folder."""
    if model is not None:
        return bool(getattr(model, "bundled", False))
    if path is None:
        return True
    try:
        return Path(path).expanduser().resolve() == BUNDLED_MODEL_DIR.resolve()
    except OSError:
        return False


def _assign_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Strict load with one-line errors for missing / unexpected keys and shape mismatches."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"{source}: {what} is missing {len(missing)} weights (e.g. {missing[0]})")
    if unexpected:
        raise CheckpointError(f"{source}: {what} has {len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: {what} weight {k} has shape {tuple(state[k].shape)}, "
                                  f"expected {tuple(v.shape)}")
    module.load_state_dict(state, strict=True, assign=True)


def _build_empty(config: Zero123Config):
    """The model with parameters on the meta device (no random init of ~1.2 B weights); buffers stay real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return config.build()


def _finish(model, dtype, device):
    dtype = torch.float32 if dtype is None else resolve_dtype(dtype)
    return model.to(device=device or "cpu", dtype=dtype).eval().requires_grad_(False)


def load_ldm_checkpoint(path, variant=None, use_ema: bool = True, num_heads: int | None = None, dtype=None,
                        device=None, original_config=None):
    """An original LDM single-file checkpoint -> ``(Zero123Model, LoadReport)``.

    ``variant`` (``zero123`` | ``stable_zero123``) defaults to a sidecar JSON's or the file name's (see
    ``detect_variant``). EMA weights (``model_ema.*``) are used when present unless ``use_ema=False``.
    ``original_config``: the original LDM yaml (path), the source of every size the tensors do not determine
    (``zero123.loading.ldm_checkpoint``); ``report.extra["sizes_from"]`` says where each came from.
    """
    path = Path(path)
    original = read_original_config(original_config) if original_config else None
    obj = read_checkpoint_file(path)
    from .safe_io import extract_state_dict

    sd = extract_state_dict(obj, path)
    sidecar = check_sidecar(read_sidecar(path), path)
    variant = ConditioningVariant.parse(variant) if variant else detect_variant(path, sidecar)
    groups = split_ldm_state_dict(sd, use_ema=use_ema, source=str(path))
    sizes_from: dict = {}
    config = config_from_ldm(groups, variant.value, sidecar, num_heads, original, sizes_from)
    model = _build_empty(config)
    _assign_weights(model.unet, convert_unet(groups, config.unet), "UNet", str(path))
    _assign_weights(model.vae, convert_vae(groups, config.vae), "VAE", str(path))
    _assign_weights(model.image_encoder, convert_openai_clip_visual(groups.clip_visual), "CLIP image encoder",
                    str(path))
    _assign_weights(model.camera_projection, {f"projection.{k}": v for k, v in groups.cc_projection.items()},
                    "camera projection", str(path))
    report = LoadReport(source=str(path), format="ldm", variant=variant.value, config=config,
                        uses_ema=groups.uses_ema, ignored=groups.ignored,
                        extra={**{k: obj[k] for k in ("global_step", "epoch")
                                  if k in obj and not torch.is_tensor(obj[k])}, "sizes_from": sizes_from})
    return _finish(model, dtype, device), report


def load_diffusers_folder(folder, variant=None, dtype=None, device=None, weights_variant=None):
    """A diffusers-format folder -> ``(Zero123Model, LoadReport)``.

    Reads every layout of ``zero123.loading.folder_layouts``: kxic/zero123-* (``cc_projection/``, what we write),
    bennyguo/ashawkey ``Zero123Pipeline`` folders (``clip_camera_projection/`` with ``proj.*``) and our older
    folders. ``weights_variant``: ``None`` (EMA files when present, else plain, else fp16), ``"plain"``, ``"ema"``,
    ``"fp16"``, ``"fp16_ema"`` or ``"non_ema"`` (see ``folder_layouts.weights_file``). ``variant``: the camera
    conditioning; default from ``zero123.json``, an older ``cc_projection/config.json``, the folder's name, else
    ``zero123`` with a warning. Every weight file is read safely (safetensors, or ``.bin`` with
    ``weights_only=True``); int8-stored weights (``zero123.loading.int8_weights``) are dequantized."""
    folder = Path(folder)
    weights_variant = parse_weights_variant(weights_variant)
    for part in ("unet", "vae", "image_encoder"):
        if not (folder / part).is_dir():
            raise CheckpointError(f"{folder} is not a Zero123 diffusers folder: no {part}/ subfolder")
    proj_dir, proj_prefix = projection_folder(folder)
    proj_cfg = read_json(proj_dir / "config.json")
    check_projection_config(proj_dir, proj_cfg)
    meta = read_meta(folder)
    if variant:
        variant, variant_source = ConditioningVariant.parse(variant), "given"
    else:
        variant, variant_source = folder_variant(folder, meta, proj_cfg)
    files = {part: weights_file(folder / part, weights_variant) for part in (*COMPONENTS[:3], proj_dir.name)}
    if weights_variant not in (None, "plain") and all(v != weights_variant for _, v in files.values()):
        raise CheckpointError(f"{folder} has no {weights_variant} weight files (weights variant "
                              f"{weights_variant!r}); found: {sorted({str(v or 'plain') for _, v in files.values()})}")
    config = Zero123Config(unet=_strip(read_json(folder / "unet" / "config.json")),
                           vae=_strip(read_json(folder / "vae" / "config.json")),
                           clip=_clip_kwargs(read_json(folder / "image_encoder" / "config.json")),
                           variant=variant.value)
    try:
        with stage("build (meta device)"):
            model = _build_empty(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder}: component configs do not describe a Zero123 model ({exc})") from None
    # a CUDA target reads the weights straight onto the GPU (``_finish`` then moves only the buffers)
    read_dev = device if device is not None and torch.device(device).type == "cuda" else "cpu"
    for part, module in (("unet", model.unet), ("vae", model.vae), ("image_encoder", model.image_encoder)):
        with stage(f"read + assign {part}"):
            _assign_weights(module, dequantize_state_dict(read_state_dict(files[part][0], read_dev)), part,
                            str(folder))
    cc = dequantize_state_dict(read_state_dict(files[proj_dir.name][0], read_dev))
    cc = {"projection." + k[len(proj_prefix):] if k.startswith(proj_prefix) else k: v for k, v in cc.items()}
    _assign_weights(model.camera_projection, cc, proj_dir.name, str(folder))
    if model.unet.config.in_channels != 2 * model.vae.config.latent_channels:
        raise CheckpointError(f"{folder}: UNet takes {model.unet.config.in_channels} channels; a Zero123 UNet takes "
                              f"{2 * model.vae.config.latent_channels} (noisy latent + input-view latent)")
    used = {part: variant_name or "plain" for part, (_, variant_name) in files.items()}
    report = LoadReport(source=str(folder), format="diffusers", variant=variant.value, config=config,
                        uses_ema=used["unet"] in ("ema", "fp16_ema"),
                        extra={"variant_from": variant_source, "weight_files": used})
    with stage("move and cast to the device and dtype"):
        return _finish(model, dtype, device), report


def _strip(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _clip_kwargs(cfg: dict) -> dict:
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
            "patch_size", "projection_dim", "hidden_act", "layer_norm_eps", "num_channels")
    if "vision_config" in cfg:  # a full CLIPConfig
        cfg = {**cfg["vision_config"], "projection_dim": cfg.get("projection_dim", 768)}
    return {k: cfg[k] for k in keep if k in cfg}


def load_model(path=None, variant=None, dtype=None, device=None, use_ema: bool = True, return_report=False,
               weights_variant=None, original_config=None):
    """Load a Zero123-family model from a file, a folder, or (``path=None``) the bundled default model.

    ``use_ema`` and ``original_config`` (the LDM yaml) apply to single files; ``weights_variant`` to folders (see
    ``load_diffusers_folder``), whose configs already hold every size."""
    if path is None:
        path = bundled_model_path()
        if not (path / "model_index.json").is_file():
            raise CheckpointError("this install has no bundled default model; pass a checkpoint (--checkpoint)")
    path = require_checkpoint(path)
    if path.is_dir() and original_config:
        raise CheckpointError(f"--original-config applies to single-file checkpoints; {path} is a folder, whose "
                              "component configs hold its sizes")
    if path.is_dir():
        model, report = load_diffusers_folder(path, variant=variant, dtype=dtype, device=device,
                                              weights_variant=weights_variant)
    else:
        model, report = load_ldm_checkpoint(path, variant=variant, use_ema=use_ema, dtype=dtype, device=device,
                                            original_config=original_config)
    model.bundled = is_bundled_model(path)  # to3d's `--preset auto` picks the bundled model's GPU preset by it
    return (model, report) if return_report else model


def save_pretrained(model, folder, half: bool = False, int8_unet: bool = False,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` as a diffusers-format folder with safetensors (``half=True`` stores fp16).

    The layout is the kxic/zero123-* one (``folder_layouts.KXIC_MODEL_INDEX``): diffusers' community
    ``Zero1to3StableDiffusionPipeline`` loads it unchanged with ``DiffusionPipeline.from_pretrained(folder,
    custom_pipeline=...)``. The camera conditioning is recorded in ``zero123.json``, which diffusers ignores.

    ``int8_unet=True`` stores the UNet's large weights as int8 with per-channel scales
    (``zero123.loading.int8_weights``; its other tensors in fp16, or fp32 without ``half``): about half the UNet's
    fp16 bytes. Such a folder loads with ``zero123`` (``load_model``), not with diffusers' ``from_pretrained``.
    ``extra_files``: ``{name: text}`` written at the folder's top level too (e.g. the pipeline's ``sampling.json``).
    Written into a temporary sibling folder first, then renamed, so a crash never leaves a half-written model.
    """
    from diffusers import __version__ as diffusers_version
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    from ..schedulers import make_ddim_scheduler
    from ..utils.atomic import atomic_folder

    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        dtype = torch.float16 if half else None
        for name in COMPONENTS:
            module = getattr(model, "camera_projection" if name == "cc_projection" else name)
            if name == "unet" and int8_unet:
                module.save_config(tmp / name)
                save_file(quantize_state_dict(module.state_dict(), float_dtype=dtype),
                          str(tmp / name / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
                continue
            if dtype is not None:
                module = _half_copy(module)
            if name == "cc_projection":  # the community pipeline's CCProjection(in_channel=772, out_channel=768)
                (tmp / name).mkdir()
                (tmp / name / "config.json").write_text(json.dumps(
                    cc_projection_config(module.config.embed_dim, diffusers_version), indent=2) + "\n")
                save_file({k: v.contiguous() for k, v in module.state_dict().items()},
                          str(tmp / name / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
                continue
            module.save_pretrained(tmp / name, safe_serialization=True)
        make_ddim_scheduler().save_pretrained(tmp / "scheduler")
        size = model.image_encoder.config.image_size
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                           do_center_crop=True, resample=3).save_pretrained(tmp / "feature_extractor")
        index = {"_class_name": KXIC_MODEL_INDEX["_class_name"], "_diffusers_version": diffusers_version,
                 **{k: v for k, v in KXIC_MODEL_INDEX.items() if k != "_class_name"}}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / META_FILE).write_text(json.dumps({"variant": model.variant.value}, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return folder


def _half_copy(module):
    import copy

    return copy.deepcopy(module).to(torch.float16)
