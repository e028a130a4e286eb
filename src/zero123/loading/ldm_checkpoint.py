"""Original single-file LDM checkpoints (``stable_zero123.ckpt``, ``zero123-xl.ckpt``, ``105000.ckpt``, .safetensors).

Key groups of a real checkpoint (``../shared/spec/zero123_ldm_keys.tsv`` lists all 1938):

=================================  =====================================================================
``model.diffusion_model.*``        LDM ``UNetModel`` -> diffusers ``UNet2DConditionModel`` (diffusers' helper)
``model_ema.*``                    EMA copy of the UNet (dots removed from names); used instead when present
``first_stage_model.*``            LDM ``AutoencoderKL`` -> diffusers ``AutoencoderKL`` (diffusers' helper)
``cond_stage_model.model.visual.*`` OpenAI CLIP image tower -> transformers ``CLIPVisionModelWithProjection``
``cond_stage_model.model.<text>``  CLIP text-side leftovers: ignored explicitly (listed in ``TEXT_TOWER_KEYS``)
``cc_projection.*``                camera projection Linear(772, 768)
schedule buffers (``betas``, ...)  checked against our schedule, then ignored
=================================  =====================================================================

Sizes are read from tensor shapes. What shapes cannot tell (the UNet's attention heads, the image size, the latent
scale factor) comes from the original LDM yaml (``original_config``, CLI ``--original-config``: zero123's
``configs/sd-objaverse-finetune-c_concat-256.yaml``, threestudio's ``pretrained_config``; diffusers'
``from_single_file(original_config=...)`` convention), else a sidecar ``<checkpoint>.json`` (``{"sizes": {"unet":
{"num_heads": 2}, "vae": {"resolution": 32}}}``, the format of ``shared/fixtures/tiny_zero123_ldm.json``), else the
released defaults (8 heads, 256 px, 0.18215), each marked "assumed" in ``LoadReport.extra["sizes_from"]`` (what
``zero123 info`` prints). The CLIP image tower's heads are width // 64 (OpenAI CLIP's rule; the yaml names only
``FrozenCLIPImageEmbedder``, whose ``clip.load("ViT-L/14")`` follows it).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..camera import ConditioningVariant
from ..errors import CheckpointError
from ..models.configs import SD_SCALING_FACTOR, Zero123Config, openai_clip_vision_config, sd_unet_config, sd_vae_config

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.num_updates", "model_ema.decay")
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.model."
CLIP_VISUAL_PREFIX = CLIP_PREFIX + "visual."
TEXT_TOWER_KEYS = ("positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
                   "ln_final.weight", "ln_final.bias")
TEXT_TOWER_PREFIXES = ("transformer.",)  # present when the text transformer was not deleted
CC_PROJECTION_KEYS = ("cc_projection.weight", "cc_projection.bias")
SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2")
DEFAULT_NUM_HEADS = 8


@dataclass
class LdmKeyGroups:
    """A checkpoint's keys sorted into what is used and what is ignored (and why)."""

    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    clip_visual: dict[str, torch.Tensor]
    cc_projection: dict[str, torch.Tensor]
    uses_ema: bool
    ignored: dict[str, str] = field(default_factory=dict)  # key -> reason


def ema_key(unet_key: str) -> str:
    """LitEma's flat name of ``model.diffusion_model.<name>``: ``model_ema.diffusion_model<name without dots>``."""
    return EMA_PREFIX + unet_key[len("model."):].replace(".", "")


def split_ldm_state_dict(sd: dict[str, torch.Tensor], use_ema: bool = True, source="checkpoint") -> LdmKeyGroups:
    """Sort every key; raise ``CheckpointError`` on missing parts or on keys that belong to nothing we know."""
    ignored: dict[str, str] = {}
    unet = {k: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    vae = {k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    visual = {k[len(CLIP_VISUAL_PREFIX):]: v for k, v in sd.items() if k.startswith(CLIP_VISUAL_PREFIX)}
    for part, keys in (("UNet (model.diffusion_model.*)", unet), ("VAE (first_stage_model.*)", vae),
                       ("CLIP image encoder (cond_stage_model.model.visual.*)", visual)):
        if not keys:
            raise CheckpointError(f"{source} is not a Zero123-family checkpoint: no {part} weights "
                                  f"({len(sd)} keys, e.g. {', '.join(list(sd)[:3])})")
    missing_cc = [k for k in CC_PROJECTION_KEYS if k not in sd]
    if missing_cc:
        raise CheckpointError(f"{source} has no camera projection ({', '.join(missing_cc)} missing): it looks like "
                              "a Stable Diffusion / image-variations checkpoint, not a Zero123-family one")
    cc = {k.split(".", 1)[1]: sd[k] for k in CC_PROJECTION_KEYS}

    ema_keys = {k for k in sd if k.startswith(EMA_PREFIX)}
    uses_ema = False
    if ema_keys - set(EMA_BOOKKEEPING):
        wanted = {k: ema_key(k) for k in unet}
        absent = [e for e in wanted.values() if e not in sd]
        if absent:
            raise CheckpointError(f"{source}: incomplete EMA weights, {len(absent)} of {len(wanted)} UNet tensors "
                                  f"have no model_ema.* copy (e.g. {absent[0]}); pass use_ema=False to use the "
                                  "plain weights")
        extra_ema = ema_keys - set(wanted.values()) - set(EMA_BOOKKEEPING)
        if extra_ema:
            raise CheckpointError(f"{source}: unexpected EMA keys with no UNet counterpart: "
                                  f"{', '.join(sorted(extra_ema)[:3])} ({len(extra_ema)} in all)")
        if use_ema:
            uses_ema = True
            for k, e in wanted.items():
                ignored[k] = "plain UNet weight; the EMA copy is used"
            unet = {k: sd[e] for k, e in wanted.items()}
        else:
            for e in wanted.values():
                ignored[e] = "EMA weight; use_ema=False"
    for k in EMA_BOOKKEEPING:
        if k in sd:
            ignored[k] = "EMA bookkeeping"

    for k in sd:
        if k.startswith(CLIP_PREFIX) and not k.startswith(CLIP_VISUAL_PREFIX):
            name = k[len(CLIP_PREFIX):]
            if name in TEXT_TOWER_KEYS or name.startswith(TEXT_TOWER_PREFIXES):
                ignored[k] = "CLIP text tower (unused by Zero123)"
        elif k in SCHEDULE_KEYS:
            ignored[k] = "noise-schedule buffer (checked, recomputed)"
    known = set(unet) | {VAE_PREFIX + k for k in vae} | {CLIP_VISUAL_PREFIX + k for k in visual} \
        | set(CC_PROJECTION_KEYS) | set(ignored) | ({ema_key(k) for k in unet} if uses_ema else set())
    unexpected = sorted(k for k in sd if k not in known)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys {', '.join(unexpected[:4])}"
                              f"{' ...' if len(unexpected) > 4 else ''} ({len(unexpected)} in all)")
    _check_schedule(sd, source)
    return LdmKeyGroups(unet=unet, vae=vae, clip_visual=visual, cc_projection=cc, uses_ema=uses_ema, ignored=ignored)


def _check_schedule(sd: dict, source) -> None:
    if "alphas_cumprod" not in sd:
        return
    from ..schedulers import alphas_cumprod

    ours, theirs = alphas_cumprod().double(), sd["alphas_cumprod"].double().flatten()
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-4, atol=1e-6):
        raise CheckpointError(f"{source} was trained with a different noise schedule than Zero123's "
                              "(scaled_linear 0.00085..0.012, 1000 steps)")


# ----- sizes from shapes -----------------------------------------------------------------------------------------

def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def infer_unet_sizes(unet: dict[str, torch.Tensor], num_heads: int = DEFAULT_NUM_HEADS) -> dict:
    """LDM ``UNetModel`` parameters from the (prefix-stripped or not) UNet tensors."""
    sd = {k[len(UNET_PREFIX):] if k.startswith(UNET_PREFIX) else k: v for k, v in unet.items()}
    try:
        conv_in = sd["input_blocks.0.0.weight"]
        model_channels, in_channels = conv_in.shape[0], conv_in.shape[1]
        out_channels = sd["out.2.weight"].shape[0]
        blocks = _indices(sd, r"input_blocks\.(\d+)\.")
        levels, current = [], []
        for i in blocks[1:]:
            if f"input_blocks.{i}.0.op.weight" in sd:  # downsample closes a level
                levels.append(current)
                current = []
            else:
                current.append(i)
        levels.append(current)
        num_res_blocks = len(levels[0])
        mult, attention_resolutions = [], []
        for lvl, idx in enumerate(levels):
            if len(idx) != num_res_blocks:
                raise CheckpointError("UNet levels have different numbers of res blocks")
            mult.append(sd[f"input_blocks.{idx[0]}.0.out_layers.3.weight"].shape[0] // model_channels)
            if f"input_blocks.{idx[0]}.1.proj_in.weight" in sd:
                attention_resolutions.append(2 ** lvl)
        first_attn = next(k for k in sd if ".transformer_blocks." in k)
        attn_prefix = first_attn.split(".transformer_blocks.")[0]
        depth = len(_indices(sd, re.escape(attn_prefix) + r"\.transformer_blocks\.(\d+)\."))
        context_dim = sd[attn_prefix + ".transformer_blocks.0.attn2.to_k.weight"].shape[1]
        linear = sd[attn_prefix + ".proj_in.weight"].dim() == 2
    except (KeyError, StopIteration, IndexError) as exc:
        raise CheckpointError(f"UNet weights do not have the LDM UNetModel layout (missing {exc})") from None
    if linear:
        raise CheckpointError("UNet uses linear transformer projections (SD 2.x layout); Zero123 models use SD 1.x")
    return dict(in_channels=int(in_channels), out_channels=int(out_channels), model_channels=int(model_channels),
                channel_mult=mult, num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
                transformer_depth=depth, context_dim=int(context_dim), num_heads=int(num_heads))


def infer_vae_sizes(vae: dict[str, torch.Tensor]) -> dict:
    """LDM ``AutoencoderKL`` ddconfig from the (prefix-stripped) VAE tensors."""
    try:
        ch = vae["encoder.conv_in.weight"].shape[0]
        levels = _indices(vae, r"encoder\.down\.(\d+)\.")
        ch_mult = [vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in levels]
        num_res_blocks = len(_indices(vae, r"encoder\.down\.0\.block\.(\d+)\."))
        z_channels = vae["decoder.conv_in.weight"].shape[1]
        double_z = vae["encoder.conv_out.weight"].shape[0] == 2 * z_channels
    except KeyError as exc:
        raise CheckpointError(f"VAE weights do not have the LDM AutoencoderKL layout (missing {exc})") from None
    if any(k.startswith("encoder.down.") and ".attn." in k for k in vae):
        raise CheckpointError("VAE has attention outside its mid block; not a Stable Diffusion VAE layout")
    if not double_z:
        raise CheckpointError("VAE is not a KL autoencoder (double_z is false)")
    return dict(ch=int(ch), ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=int(z_channels))


def infer_clip_sizes(visual: dict[str, torch.Tensor]) -> dict:
    """OpenAI CLIP ``VisionTransformer`` sizes from the (prefix-stripped) ``visual.*`` tensors."""
    try:
        conv1 = visual["conv1.weight"]
        width, patch = conv1.shape[0], conv1.shape[-1]
        grid = math.isqrt(visual["positional_embedding"].shape[0] - 1)
        layers = len(_indices(visual, r"transformer\.resblocks\.(\d+)\."))
        embed_dim = visual["proj"].shape[1]
        mlp = visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"CLIP image weights do not have the OpenAI CLIP layout (missing {exc})") from None
    return dict(width=int(width), layers=layers, patch_size=int(patch), image_size=int(grid * patch),
                embed_dim=int(embed_dim), mlp_ratio=int(mlp) // int(width))


def read_sidecar(path: Path) -> dict:
    """``<stem>.json`` or ``<name>.json`` beside a checkpoint (optional sizes/variant overrides), else {}."""
    for candidate in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{candidate}: not valid JSON ({exc})") from None
    return {}


SIDECAR_KEYS = ("variant", "sizes", "ldm", "ddim", "seed")
DEFAULT_IMAGE_SIZE = 256
#: the LDM ``UNetModel`` / ``ddconfig`` parameters that tensor shapes determine, checked against a yaml's
SHAPE_KEYS = {"unet": ("in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
                       "attention_resolutions", "transformer_depth", "context_dim"),
              "vae": ("ch", "ch_mult", "num_res_blocks", "z_channels")}


def check_sidecar(sidecar: dict, path) -> dict:
    """Warn about sidecar fields that the loader does not read (a typo would otherwise be ignored silently)."""
    import warnings

    unknown = sorted(set(sidecar) - set(SIDECAR_KEYS)) + sorted(
        f"sizes.{k}" for k in set(sidecar.get("sizes", {})) - {"unet", "vae", "clip"})
    if unknown:
        warnings.warn(f"{path}: unknown field(s) {', '.join(unknown)} ignored (known: {', '.join(SIDECAR_KEYS)})",
                      stacklevel=3)
    return sidecar


def read_original_config(path) -> dict:
    """An original LDM yaml (``model.params.unet_config`` / ``first_stage_config``) as a sidecar-style dict
    ``{"sizes": {"unet": {...}, "vae": {...}}, "ldm": {"scale_factor": ...}, "source": path}``."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"--original-config {path} not found") from None
    except yaml.YAMLError as exc:
        raise CheckpointError(f"--original-config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        params = data["model"]["params"]
        unet = dict(params["unet_config"]["params"])
        vae = dict(params["first_stage_config"]["params"]["ddconfig"])
    except (KeyError, TypeError):
        raise CheckpointError(f"--original-config {path} is not an LDM config (no model.params.unet_config / "
                              "first_stage_config.params.ddconfig)") from None
    if "num_heads" not in unet or int(unet["num_heads"]) < 1:
        raise CheckpointError(f"--original-config {path}: unet_config.params.num_heads is missing (a Zero123 UNet "
                              "has a fixed number of heads)")
    ldm = {"scale_factor": float(params["scale_factor"])} if "scale_factor" in params else {}
    return {"sizes": {"unet": unet, "vae": vae}, "ldm": ldm, "source": str(path)}


def _check_against_yaml(inferred: dict, given: dict, part: str, source: str) -> None:
    for key in SHAPE_KEYS[part]:
        if key in given and key in inferred:
            want = given[key]
            want = sorted(want) if key == "attention_resolutions" else want
            have = sorted(inferred[key]) if key == "attention_resolutions" else inferred[key]
            if (list(want) if isinstance(want, (list, tuple)) else want) != \
                    (list(have) if isinstance(have, (list, tuple)) else have):
                raise CheckpointError(f"--original-config {source} says {part} {key} = {given[key]}, the checkpoint's "
                                      f"tensors have {inferred[key]}: not this checkpoint's config")


def config_from_ldm(groups: LdmKeyGroups, variant: str, sidecar: dict | None = None,
                    num_heads: int | None = None, original_config: dict | None = None,
                    provenance: dict | None = None) -> Zero123Config:
    """A ``Zero123Config`` whose sizes match the checkpoint's tensors; the rest from ``original_config``
    (``read_original_config``), else ``sidecar``, else the released defaults. ``provenance`` (a dict, if given)
    is filled with where each size came from (``read from ...`` / ``assumed (...)``)."""
    given = original_config or sidecar or {}
    where = f"read from {original_config['source']}" if original_config else "read from the sidecar JSON"
    sizes = given.get("sizes", {})
    unet_given, vae_given = sizes.get("unet", {}), sizes.get("vae", {})
    provenance = {} if provenance is None else provenance
    if num_heads:
        heads, provenance["unet.num_heads"] = num_heads, "given (num_heads=)"
    elif unet_given.get("num_heads"):
        heads, provenance["unet.num_heads"] = int(unet_given["num_heads"]), where
    else:
        heads, provenance["unet.num_heads"] = DEFAULT_NUM_HEADS, f"assumed ({DEFAULT_NUM_HEADS}, as released)"
    u = infer_unet_sizes(groups.unet, heads)
    v = infer_vae_sizes(groups.vae)
    c = infer_clip_sizes(groups.clip_visual)
    if original_config:
        _check_against_yaml(u, unet_given, "unet", original_config["source"])
        _check_against_yaml(v, vae_given, "vae", original_config["source"])
    down = 2 ** (len(v["ch_mult"]) - 1)
    if "resolution" in vae_given:
        image_size, provenance["image_size"] = int(vae_given["resolution"]), where
    else:
        image_size, provenance["image_size"] = DEFAULT_IMAGE_SIZE, f"assumed ({DEFAULT_IMAGE_SIZE}, as released)"
    if "scale_factor" in given.get("ldm", {}):
        scale, provenance["scale_factor"] = float(given["ldm"]["scale_factor"]), where
    else:
        scale, provenance["scale_factor"] = SD_SCALING_FACTOR, f"assumed ({SD_SCALING_FACTOR}, as released)"
    provenance["unet widths, levels, depth"] = provenance["vae widths, levels"] = "read from tensor shapes"
    provenance["clip width, layers, patch, image size"] = "read from tensor shapes"
    provenance["clip.num_heads"] = f"assumed (width // 64 = {max(1, c['width'] // 64)}, OpenAI CLIP's rule)"
    hint = "" if original_config else " (pass the checkpoint's LDM yaml with --original-config)"
    bad = [w for w in (u["model_channels"] * m for m in u["channel_mult"]) if w % heads]
    if bad:
        raise CheckpointError(f"UNet width {bad[0]} does not split into {heads} attention heads "
                              f"({provenance['unet.num_heads']}){hint}")
    if image_size % down or image_size // down < 2 ** (len(u["channel_mult"]) - 1):
        raise CheckpointError(f"image size {image_size} ({provenance['image_size']}) does not fit a VAE that "
                              f"downsamples by {down} and a UNet with {len(u['channel_mult'])} levels{hint}")
    cc_in, cc_out = groups.cc_projection["weight"].shape[1], groups.cc_projection["weight"].shape[0]
    if cc_out != c["embed_dim"] or cc_in != cc_out + 4:
        raise CheckpointError(f"cc_projection has shape {cc_out}x{cc_in}; expected {c['embed_dim']}x"
                              f"{c['embed_dim'] + 4} for a {c['embed_dim']}-d CLIP embedding")
    if u["context_dim"] != c["embed_dim"]:
        raise CheckpointError(f"UNet cross-attention width {u['context_dim']} != CLIP embedding {c['embed_dim']}")
    unet_cfg = sd_unet_config(
        model_channels=u["model_channels"], channel_mult=u["channel_mult"], num_res_blocks=u["num_res_blocks"],
        attention_levels=[i for i in range(len(u["channel_mult"])) if 2 ** i in u["attention_resolutions"]],
        num_heads=u["num_heads"], context_dim=u["context_dim"], transformer_depth=u["transformer_depth"],
        sample_size=image_size // down, in_channels=u["in_channels"], out_channels=u["out_channels"])
    vae_cfg = sd_vae_config(ch=v["ch"], ch_mult=v["ch_mult"], num_res_blocks=v["num_res_blocks"],
                            z_channels=v["z_channels"], resolution=image_size, scaling_factor=scale)
    clip_cfg = openai_clip_vision_config(**c)
    return Zero123Config(unet=unet_cfg, vae=vae_cfg, clip=clip_cfg, variant=ConditioningVariant.parse(variant).value)


# ----- key conversion --------------------------------------------------------------------------------------------

def convert_unet(groups: LdmKeyGroups, unet_config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    # groups.unet already holds the chosen (EMA or plain) tensors under model.diffusion_model.* names
    return convert_ldm_unet_checkpoint(groups.unet, unet_config, extract_ema=False)


def convert_vae(groups: LdmKeyGroups, vae_config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in groups.vae.items()}, vae_config)


def convert_openai_clip_visual(visual: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP ``visual.*`` tensors -> transformers ``CLIPVisionModelWithProjection`` state dict."""
    out = {
        "vision_model.embeddings.patch_embedding.weight": visual["conv1.weight"],
        "vision_model.embeddings.class_embedding": visual["class_embedding"],
        "vision_model.embeddings.position_embedding.weight": visual["positional_embedding"],
        "vision_model.pre_layrnorm.weight": visual["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": visual["ln_pre.bias"],
        "vision_model.post_layernorm.weight": visual["ln_post.weight"],
        "vision_model.post_layernorm.bias": visual["ln_post.bias"],
        "visual_projection.weight": visual["proj"].t().contiguous(),
    }
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for i in _indices(visual, r"transformer\.resblocks\.(\d+)\."):
        src, dst = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for a, b in names.items():
            for p in ("weight", "bias"):
                out[f"{dst}{b}.{p}"] = visual[f"{src}{a}.{p}"]
        for p in ("weight", "bias"):
            q, k, v = visual[f"{src}attn.in_proj_{p}"].chunk(3, dim=0)
            out[f"{dst}self_attn.q_proj.{p}"], out[f"{dst}self_attn.k_proj.{p}"] = q, k
            out[f"{dst}self_attn.v_proj.{p}"] = v
    return out


def detect_variant(path: Path, sidecar: dict) -> ConditioningVariant:
    """Variant from a sidecar ``{"variant": ...}``, else from the file name (``stable``/``123c`` -> Stable Zero123).

    Released Zero123 and Stable Zero123 checkpoints share one key layout, so the name is the only clue; pass
    ``variant=`` (CLI ``--variant``) when a file was renamed.
    """
    from .folder_layouts import guess_variant_from_name

    if "variant" in sidecar:
        return ConditioningVariant.parse(sidecar["variant"])
    return guess_variant_from_name(path.name) or ConditioningVariant.ZERO123
