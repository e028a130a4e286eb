"""The diffusers-format folder layouts of Zero123-family models, as published on the model hub.

=====================================  ===========================================================================
kxic/zero123-* (diffusers' community   ``model_index.json``: ``_class_name: Zero1to3StableDiffusionPipeline``,
``pipeline_zero1to3.py``); also what   ``"cc_projection": ["pipeline_zero1to3", "CCProjection"]``;
``zero123 convert`` writes             ``cc_projection/config.json`` holds only ``_class_name`` / ``_diffusers_version``;
                                       weights ``projection.weight`` ``[768, 772]`` / ``projection.bias``
bennyguo/zero123-xl-diffusers,         ``_class_name: Zero123Pipeline``, ``clip_camera_projection/`` whose config says
ashawkey/zero123-xl-diffusers,         ``embedding_dim 768, additional_embeddings 4``; weights ``proj.weight`` /
ashawkey/stable-zero123-diffusers      ``proj.bias`` (threestudio's and DreamGaussian's ``zero123.py``)
(threestudio, DreamGaussian)
older zero123 folders                  ``cc_projection/config.json`` with our ``embed_dim`` / ``camera_dim`` / ``variant``
=====================================  ===========================================================================

Every layout's other subfolders are diffusers' own (``unet/``, ``vae/``, ``image_encoder/``, ``scheduler/``,
``feature_extractor/``). A subfolder may hold diffusers "variant" weight files beside (or instead of) the plain one:
``diffusion_pytorch_model.<v>.safetensors`` / ``.bin`` (``model.<v>.safetensors`` for transformers models), with
``<v>`` one of ``WEIGHT_VARIANTS``. The default choice per subfolder (``weights_variant=None``) is EMA when present,
as for single files: ``ema``, then ``fp16_ema``, then the plain file, then ``fp16``.

Our own metadata lives in top-level files that diffusers ignores: ``zero123.json`` (``{"variant": ...}``) and the
pipeline's ``sampling.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..camera import ConditioningVariant
from ..errors import CheckpointError
from ..utils.weight_variants import WEIGHT_VARIANTS  # noqa: F401  (light module: the CLI parser reads it)

DEFAULT_WEIGHT_ORDER = ("ema", "fp16_ema", None, "fp16")
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
WEIGHT_SUFFIXES = ("safetensors", "bin")
#: our metadata file at a folder's top level (diffusers only reads the subfolders named in model_index.json)
META_FILE = "zero123.json"
META_KEYS = ("variant",)
#: the camera projection subfolder of each layout -> the prefix of its Linear's weight names
PROJECTION_LAYOUTS = {"cc_projection": "projection.", "clip_camera_projection": "proj."}

#: ``model_index.json`` written by ``save_pretrained``: exactly the kxic/zero123-* folders' names (the community
#: ``Zero1to3StableDiffusionPipeline`` loads it unchanged); ``_diffusers_version`` is added when writing.
KXIC_MODEL_INDEX = {
    "_class_name": "Zero1to3StableDiffusionPipeline",
    "cc_projection": ["pipeline_zero1to3", "CCProjection"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "requires_safety_checker": True,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
CC_PROJECTION_CLASS = "CCProjection"
#: the community ``CCProjection``'s defaults (its ``__init__(in_channel=772, out_channel=768)``)
CC_PROJECTION_DEFAULT_DIM = 768


def cc_projection_config(embed_dim: int, diffusers_version: str) -> dict:
    """``cc_projection/config.json`` as the kxic folders have it: only ``_class_name`` / ``_diffusers_version``
    for the released 768-d embedding; a model of another width (the bundled small one) also names
    ``in_channel`` / ``out_channel``, which diffusers passes to ``CCProjection.__init__``."""
    cfg = {"_class_name": CC_PROJECTION_CLASS, "_diffusers_version": diffusers_version}
    if embed_dim != CC_PROJECTION_DEFAULT_DIM:
        cfg.update(in_channel=embed_dim + 4, out_channel=embed_dim)
    return cfg


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: not a diffusers-format Zero123 folder") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def parse_weights_variant(value) -> str | None:
    """``None`` (auto: EMA when present), ``"plain"`` (the non-EMA files) or one of ``WEIGHT_VARIANTS``."""
    if value is None or value == "auto":
        return None
    if value == "plain" or value in WEIGHT_VARIANTS:
        return value
    raise CheckpointError(f"unknown weights variant {value!r}: use auto, plain, {', '.join(WEIGHT_VARIANTS)}")


def _candidates(component: Path, variant: str | None) -> list[Path]:
    infix = "" if variant is None else f".{variant}"
    return [component / f"{stem}{infix}.{suffix}" for suffix in WEIGHT_SUFFIXES for stem in WEIGHT_STEMS]


def weights_file(component: Path, weights_variant: str | None = None) -> tuple[Path, str | None]:
    """The weight file of one subfolder and its variant (``None`` for the plain file).

    ``weights_variant=None``: ``DEFAULT_WEIGHT_ORDER``; ``"plain"``: the non-EMA weights (the file without a
    variant, else ``fp16``); a variant name: that file, else (as diffusers does for a component saved without it)
    the plain one.
    """
    order = DEFAULT_WEIGHT_ORDER if weights_variant is None else \
        ((None, "fp16") if weights_variant == "plain" else (weights_variant, None))
    for variant in order:
        for path in _candidates(component, variant):
            if path.is_file():
                return path, variant
    present = [str(v or "plain") for v in (None, *WEIGHT_VARIANTS)
               if any(p.is_file() for p in _candidates(component, v))]
    if present:
        raise CheckpointError(f"{component} has no {weights_variant} weights file (weights variant "
                              f"{weights_variant!r}); it has: {', '.join(present)}")
    raise CheckpointError(f"{component} has no weights file (diffusion_pytorch_model[.fp16|.fp16_ema|.ema]"
                          ".safetensors or .bin)")


def projection_folder(folder: Path) -> tuple[Path, str]:
    """``(subfolder, weight-name prefix)`` of the camera projection in either layout, else a one-line error."""
    for name, prefix in PROJECTION_LAYOUTS.items():
        if (folder / name).is_dir():
            return folder / name, prefix
    raise CheckpointError(f"{folder} is not a Zero123 diffusers folder: no cc_projection/ (or "
                          "clip_camera_projection/) subfolder")


def check_projection_config(sub: Path, cfg: dict) -> None:
    """The projection configs of all layouts take 4 camera numbers; anything else is not a Zero123 model."""
    if "additional_embeddings" in cfg:
        camera = int(cfg["additional_embeddings"])
    elif "camera_dim" in cfg:
        camera = int(cfg["camera_dim"])
    elif "in_channel" in cfg:
        camera = int(cfg["in_channel"]) - int(cfg.get("out_channel", 768))
    else:
        return
    if camera != 4:
        raise CheckpointError(f"{sub} takes {camera} camera numbers; Zero123 models take 4")


def read_meta(folder: Path) -> dict:
    """``zero123.json`` (our metadata) as a dict; ``{}`` when absent. Unknown fields warn."""
    path = folder / META_FILE
    if not path.is_file():
        return {}
    meta = read_json(path)
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        warnings.warn(f"{path}: unknown field(s) {', '.join(unknown)} ignored", stacklevel=3)
    return meta


def guess_variant_from_name(name: str) -> ConditioningVariant | None:
    """Stable Zero123 when a file/folder name says so (``stable``, ``123c``, ``sz123``), else ``None``."""
    name = name.lower().replace("-", "_")
    if "stable" in name or "zero123c" in name or "sz123" in name:
        return ConditioningVariant.STABLE_ZERO123
    if "zero123" in name or "zero1to3" in name:
        return ConditioningVariant.ZERO123
    return None


def folder_variant(folder: Path, meta: dict, projection_cfg: dict) -> tuple[ConditioningVariant, str]:
    """The camera conditioning of a folder and where it came from: ``zero123.json`` (what we write), an older
    folder's ``cc_projection/config.json``, the folder's name (a hub cache ``models--owner--name/snapshots/<hash>``
    counts by its repository name), else ``zero123`` with a warning that names ``--variant``."""
    if "variant" in meta:
        return ConditioningVariant.parse(meta["variant"]), META_FILE
    if "variant" in projection_cfg:
        return ConditioningVariant.parse(projection_cfg["variant"]), "cc_projection/config.json"
    folder = folder.resolve()
    names = [folder.name]
    if folder.parent.name == "snapshots":
        names.append(folder.parent.parent.name)
    for name in names:
        guess = guess_variant_from_name(name)
        if guess is not None:
            return guess, f"folder name {name!r}"
    warnings.warn(f"{folder}: the folder does not say which camera conditioning it uses; assuming zero123 "
                  "(pass --variant stable_zero123 / variant='stable_zero123' for a Stable Zero123 model)",
                  stacklevel=3)
    return ConditioningVariant.ZERO123, "assumed"
