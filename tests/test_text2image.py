"""Text-to-image stage: a tiny random SDXL built from diffusers configs (no download), saved as a diffusers folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zero123.errors import Zero123Error
from zero123.pipelines.text2image import (DEFAULT_PROMPT_TEMPLATE, PRESETS, TextToImage, format_prompt,
                                          load_sdxl_pipeline, resolve_preset)

TINY_SIZE = 64


# ----- a tiny SDXL, shared with test_text_to_3d.py ----------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: 256 printable characters standing for the 256 byte values."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer with a character-level vocabulary (every text tokenizes) and no merges."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def build_tiny_sdxl(folder: Path, seed: int = 0, variant: str | None = None) -> Path:
    """A random SDXL pipeline (64 px images, 8x8 latents, ~0.4 M params) saved as a diffusers folder."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = write_tiny_clip_tokenizer(folder.parent / f"{folder.name}_tokenizer_src")
    torch.manual_seed(seed)
    bos, eos = tok.convert_tokens_to_ids("<|startoftext|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    te = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tok),
              projection_dim=32, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, hidden_act="quick_gelu",
              max_position_embeddings=77)
    # like SDXL, the second (OpenCLIP-style) text encoder is wider than the first: 48 vs 32
    te2 = {**te, "hidden_size": 48, "intermediate_size": 53, "projection_dim": 48, "hidden_act": "gelu"}
    unet = UNet2DConditionModel(
        sample_size=TINY_SIZE // 8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 48,  # 6 time ids x 8 + pooled text_encoder_2 embedding
        cross_attention_dim=80)  # text_encoder (32) + text_encoder_2 (48) hidden states, concatenated
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=[8, 16, 16, 16], layers_per_block=1,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        latent_channels=4, norm_num_groups=8, sample_size=TINY_SIZE, scaling_factor=0.13025,
                        force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**te)),
                                     text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**te2)),
                                     tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(str(folder), variant=variant)
    return folder


def _sgm_unet_keys(cfg: dict) -> dict:
    """diffusers UNet module prefix -> SGM (``model.diffusion_model.``) prefix, for an SD/SDXL-style UNet."""
    nb, per = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    m = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
         "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
         "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
         "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
         "mid_block.resnets.1": "middle_block.2"}
    idx = 1
    for i in range(nb):
        for j in range(per):
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{idx}.0"
            m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{idx}.1"
            idx += 1
        if i < nb - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{idx}.0.op"
            idx += 1
    idx = 0
    for i, kind in enumerate(cfg["up_block_types"]):
        for j in range(per + 1):
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{idx}.0"
            m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{idx}.1"
            if j == per and i < nb - 1:
                m[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{idx}.{2 if 'CrossAttn' in kind else 1}.conv"
            idx += 1
    return m


def _rename(state: dict, prefixes: dict, inner: dict, out_prefix: str) -> dict:
    """Rename ``state`` keys by their longest matching module prefix, then inner names (resnet parts)."""
    out = {}
    order = sorted(prefixes, key=len, reverse=True)
    for k, v in state.items():
        pre = next(p for p in order if k.startswith(p + "."))
        rest = k[len(pre) + 1:]
        head, _, tail = rest.partition(".")
        if ("resnets" in pre) and head in inner:
            rest = inner[head] + "." + tail
        out[out_prefix + prefixes[pre] + "." + rest] = v
    return out


def write_sgm_single_file(pipe, path: Path) -> Path:
    """Save a diffusers SDXL pipeline as ONE file in the original (Stability SGM) key layout, like
    ``sd_xl_base_1.0.safetensors``: what ``StableDiffusionXLPipeline.from_single_file`` reads."""
    from safetensors.torch import save_file

    sd = {}
    unet = {k: v for k, v in pipe.unet.state_dict().items()}
    sd.update(_rename(unet, _sgm_unet_keys(pipe.unet.config), {
        "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
        "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}, "model.diffusion_model."))
    nb = len(pipe.vae.config.block_out_channels)
    vm = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for part in ("encoder", "decoder"):
        vm.update({f"{part}.conv_in": f"{part}.conv_in", f"{part}.conv_out": f"{part}.conv_out",
                   f"{part}.conv_norm_out": f"{part}.norm_out", f"{part}.mid_block.resnets.0": f"{part}.mid.block_1",
                   f"{part}.mid_block.resnets.1": f"{part}.mid.block_2"})
        for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            vm[f"{part}.mid_block.attentions.0.{a}"] = f"{part}.mid.attn_1.{b}"
    for i in range(nb):
        for j in range(pipe.vae.config.layers_per_block + 1):
            vm[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
            vm[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{nb - 1 - i}.block.{j}"
        vm[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        vm[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{nb - 1 - i}.upsample.conv"
    vae = {k: (v[:, :, None, None] if ".attentions." in k and v.ndim == 2 else v)
           for k, v in pipe.vae.state_dict().items()}  # LDM's attention projections are 1x1 convolutions
    sd.update(_rename(vae, vm, {"conv_shortcut": "nin_shortcut"}, "first_stage_model."))
    for k, v in pipe.text_encoder.state_dict().items():  # HF CLIP-L under the SGM prefix, original module names
        sd["conditioner.embedders.0.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    te2 = pipe.text_encoder_2.state_dict()
    p = "conditioner.embedders.1.model."
    sd[p + "token_embedding.weight"] = te2["text_model.embeddings.token_embedding.weight"]
    sd[p + "positional_embedding"] = te2["text_model.embeddings.position_embedding.weight"]
    sd[p + "ln_final.weight"] = te2["text_model.final_layer_norm.weight"]
    sd[p + "ln_final.bias"] = te2["text_model.final_layer_norm.bias"]
    sd[p + "text_projection"] = te2["text_projection.weight"].T.contiguous()
    for i in range(pipe.text_encoder_2.config.num_hidden_layers):
        h, r = f"text_model.encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for w in ("weight", "bias"):
            sd[r + f"attn.in_proj_{w}"] = torch.cat([te2[h + f"self_attn.{q}_proj.{w}"] for q in "qkv"])
            sd[r + f"attn.out_proj.{w}"] = te2[h + f"self_attn.out_proj.{w}"]
            sd[r + f"ln_1.{w}"] = te2[h + f"layer_norm1.{w}"]
            sd[r + f"ln_2.{w}"] = te2[h + f"layer_norm2.{w}"]
            sd[r + f"mlp.c_fc.{w}"] = te2[h + f"mlp.fc1.{w}"]
            sd[r + f"mlp.c_proj.{w}"] = te2[h + f"mlp.fc2.{w}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("t2i") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_t2i(tiny_sdxl_dir) -> TextToImage:
    return TextToImage.from_pretrained(tiny_sdxl_dir, device="cpu")


# ----- prompt and presets -----------------------------------------------------------------------------------------
def test_format_prompt():
    assert format_prompt("  a friendly dog ") == "a 3D render of a friendly dog, single object, centered, white background"
    assert format_prompt("a {weird} mug", "{prompt}!") == "a {weird} mug!"
    assert format_prompt("a cat", None) == "a cat"
    with pytest.raises(Zero123Error, match="must contain"):
        format_prompt("a cat", "a photo of a cat")
    with pytest.raises(Zero123Error, match="empty"):
        format_prompt("   ")


def test_resolve_preset():
    assert resolve_preset("/models/sdxl-turbo").name == "turbo"
    assert resolve_preset("/models/SDXL_Turbo/sd_xl_turbo_1.0_fp16.safetensors").name == "turbo"
    assert resolve_preset("/models/stable-diffusion-xl-base-1.0").name == "sdxl"
    assert resolve_preset("/models/sdxl-turbo", "sdxl").name == "sdxl"
    assert resolve_preset("/x", "SDXL-Turbo") == PRESETS["turbo"]
    assert (PRESETS["turbo"].guidance_scale, PRESETS["turbo"].size) == (0.0, 512)
    assert 1 <= PRESETS["turbo"].steps <= 4 and PRESETS["sdxl"].size == 1024
    with pytest.raises(Zero123Error, match="unknown text-to-image preset"):
        resolve_preset("/x", "sd15")


# ----- loading: errors --------------------------------------------------------------------------------------------
def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_missing_and_wrong_paths(tmp_path):
    with pytest.raises(Zero123Error, match="not found") as e:
        load_sdxl_pipeline(tmp_path / "nope", device="cpu")
    _one_line(e)
    with pytest.raises(Zero123Error, match="no model_index.json") as e:
        load_sdxl_pipeline(tmp_path, device="cpu")
    _one_line(e)
    sd15 = tmp_path / "sd15"
    sd15.mkdir()
    (sd15 / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"]}))
    with pytest.raises(Zero123Error, match="not a text-to-image SDXL pipeline.*text_encoder_2") as e:
        load_sdxl_pipeline(sd15, device="cpu")
    _one_line(e)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(Zero123Error, match="not an SDXL model"):
        load_sdxl_pipeline(txt, device="cpu")
    from safetensors.torch import save_file

    other = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(other))
    with pytest.raises(Zero123Error, match="not an SDXL checkpoint") as e:
        load_sdxl_pipeline(other, device="cpu")
    _one_line(e)
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(Zero123Error, match="not a readable safetensors"):
        load_sdxl_pipeline(garbage, device="cpu")


def test_single_file_needs_config(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "sd_xl_base_1.0.safetensors"
    save_file({"conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 8)}, str(f))
    with pytest.raises(Zero123Error, match="--t2i-config") as e:
        load_sdxl_pipeline(f, device="cpu")
    _one_line(e)
    with pytest.raises(Zero123Error, match="config folder not found"):
        load_sdxl_pipeline(f, config=tmp_path / "missing", device="cpu")


@pytest.fixture(scope="session")
def tiny_single_file(tiny_t2i, tiny_sdxl_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(SGM-layout single .safetensors of the tiny SDXL, its weightless diffusers config folder)."""
    root = tmp_path_factory.mktemp("single")
    single = write_sgm_single_file(tiny_t2i.pipeline, root / "weights" / "sd_xl_tiny.safetensors")
    config = root / "config"
    shutil.copytree(tiny_sdxl_dir, config, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert not list(config.rglob("*.safetensors")) and (config / "tokenizer_2").is_dir()
    return single, config


def test_single_file_with_config_folder_matches_folder(tiny_t2i, tiny_single_file, tmp_path):
    """An SGM-layout single file + a weightless config folder loads and draws the same image as the folder."""
    single, config = tiny_single_file
    t2i = TextToImage.from_pretrained(single, config=config, device="cpu")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ref, got = getattr(tiny_t2i.pipeline, name).state_dict(), getattr(t2i.pipeline, name).state_dict()
        assert {k for k in ref if "position_ids" not in k} == {k for k in got if "position_ids" not in k}, name
        for k in ref:
            if "position_ids" not in k:
                torch.testing.assert_close(got[k], ref[k], msg=f"{name}.{k}")
    a = tiny_t2i.generate("a cup", seed=1, steps=2, size=TINY_SIZE)[0]
    b = t2i.generate("a cup", seed=1, steps=2, size=TINY_SIZE)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    beside = tmp_path / "sd_xl_tiny.safetensors"
    shutil.copy(single, beside)
    shutil.copytree(config, tmp_path, dirs_exist_ok=True)  # model_index.json beside the file: found alone
    assert TextToImage.from_pretrained(beside, device="cpu").preset.name == "sdxl"


def test_wrong_unet_in_sdxl_folder(tiny_sdxl_dir, tmp_path):
    bad = tmp_path / "inpaint-like"
    shutil.copytree(tiny_sdxl_dir, bad)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["in_channels"] = 9
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Zero123Error, match="not an SDXL text-to-image UNet"):
        load_sdxl_pipeline(bad, device="cpu")


# ----- generation ----------------------------------------------------------------------------------------------
def test_generate_matches_diffusers_and_seeds(tiny_t2i):
    """Our images equal diffusers' own output for the templated prompt and seed; candidate i uses seed + i."""
    calls = []
    imgs = tiny_t2i.generate("a red apple", num_images=2, seed=3, steps=2, size=TINY_SIZE,
                             on_step=lambda: calls.append(1))
    assert len(calls) == 2 * 2
    assert [im.size for im in imgs] == [(TINY_SIZE, TINY_SIZE)] * 2 and imgs[0].mode == "RGB"
    a0, a1 = (np.asarray(im, dtype=np.int16) for im in imgs)
    assert np.abs(a0 - a1).mean() > 1.0  # different seeds -> different images

    ref = tiny_t2i.pipeline(prompt=format_prompt("a red apple", DEFAULT_PROMPT_TEMPLATE),
                            negative_prompt=tiny_t2i.settings("x").negative_prompt, num_inference_steps=2,
                            guidance_scale=PRESETS["sdxl"].guidance_scale, height=TINY_SIZE, width=TINY_SIZE,
                            generator=torch.Generator("cpu").manual_seed(4), output_type="np").images[0]
    ref = np.round(np.clip(ref, 0, 1) * 255).astype(np.int16)
    assert np.abs(ref - a1).max() <= 1

    again = tiny_t2i.generate("a red apple", num_images=1, seed=4, steps=2, size=TINY_SIZE)[0]
    assert np.array_equal(np.asarray(again, dtype=np.int16), a1)
    other = tiny_t2i.generate("a blue chair", num_images=1, seed=4, steps=2, size=TINY_SIZE)[0]
    assert np.abs(np.asarray(other, dtype=np.int16) - a1).mean() > 0.5  # the prompt reaches the model


def test_settings_validation(tiny_t2i):
    s = tiny_t2i.settings("a mug", seed=7)
    assert (s.steps, s.guidance_scale, s.size, s.seed, s.preset) == (30, 5.0, 1024, 7, "sdxl")
    assert s.full_prompt.startswith("a 3D render of a mug")
    for kw, msg in [({"steps": 0}, "steps"), ({"guidance_scale": -1.0}, "guidance"), ({"size": 100}, "multiple of 8"),
                    ({"seed": -1}, "seed")]:
        with pytest.raises(Zero123Error, match=msg):
            tiny_t2i.settings("a mug", **kw)
    with pytest.raises(Zero123Error, match=">= 1"):
        tiny_t2i.generate("a mug", num_images=0)


def test_turbo_folder_and_fp16_variant(tmp_path):
    """A folder named like SDXL-Turbo gets the turbo preset; fp16-only weight files are found and loaded."""
    d = build_tiny_sdxl(tmp_path / "tiny-sdxl-turbo", seed=1, variant="fp16")
    assert list((d / "unet").glob("*.fp16.safetensors")) and not list((d / "unet").glob("*model.safetensors"))
    t2i = TextToImage.from_pretrained(d, device="cpu")
    assert t2i.preset.name == "turbo" and t2i.pipeline.unet.dtype == torch.float32
    s = t2i.settings("a cup", size=TINY_SIZE)
    assert (s.steps, s.guidance_scale) == (4, 0.0) and s.negative_prompt
    img = t2i.generate("a cup", steps=1, size=TINY_SIZE)[0]
    assert img.size == (TINY_SIZE, TINY_SIZE)


def test_nan_output_is_reported(tiny_sdxl_dir):
    t2i = TextToImage.from_pretrained(tiny_sdxl_dir, device="cpu")
    with torch.no_grad():
        t2i.pipeline.vae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(Zero123Error, match="NaN"):
        t2i.generate("a cup", steps=1, size=TINY_SIZE)


def test_loading_is_offline(tiny_sdxl_dir, tiny_single_file):
    """Load a folder and a single file in a subprocess with networking forbidden at the socket level: nothing
    may even try to connect (diffusers' single-file loader downloads configs unless given a config folder)."""
    single, config = tiny_single_file
    code = (
        "import socket\n"
        "attempts = []\n"
        "def _no(*a, **k):\n"
        "    attempts.append(a)\n"
        "    raise OSError('network access attempted')\n"
        "socket.socket.connect = _no; socket.create_connection = _no; socket.getaddrinfo = _no\n"
        "from zero123.pipelines.text2image import TextToImage\n"
        f"t = TextToImage.from_pretrained({str(tiny_sdxl_dir)!r}, device='cpu')\n"
        f"s = TextToImage.from_pretrained({str(single)!r}, config={str(config)!r}, device='cpu')\n"
        "print(t.generate('a cup', steps=1, size=64)[0].size, s.generate('a cup', steps=1, size=64)[0].size,\n"
        "      'attempts', len(attempts))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(64, 64) (64, 64) attempts 0" in out.stdout
