"""The tiny fixture checkpoint, loaded through the real loader, reproduces the original LDM code's outputs."""

import pytest
import torch
from safetensors.torch import load_file

from zero123.loading import load_ldm_checkpoint
from zero123.pipelines.zero123_pipeline import Zero123Pipeline

TOL = 1e-5  # relative error; float32 matches land near 1e-6


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return load_file(str(fixtures_dir / "tiny_zero123_ref.safetensors"))


@pytest.fixture(scope="module")
def loaded(fixtures_dir):
    return load_ldm_checkpoint(fixtures_dir / "tiny_zero123_ldm.ckpt")


def test_report(loaded):
    model, report = loaded
    assert report.uses_ema and report.variant == "zero123" and report.extra["global_step"] == 1234
    assert model.image_size == 32 and model.unet.config.in_channels == 8
    assert model.unet.config.attention_head_dim == 2  # from the sidecar JSON beside the fixture


@torch.no_grad()
def test_vae(loaded, ref):
    model, _ = loaded
    post = model.vae.encode(ref["input_image"]).latent_dist
    assert rel(post.mean, ref["vae_posterior_mean"]) < TOL
    assert rel(post.logvar, ref["vae_posterior_logvar"]) < TOL
    assert rel(model.concat_latent(ref["input_image"]), ref["unet_concat_latent"]) < TOL
    assert rel(model.decode_latents(ref["vae_decode_input"]), ref["vae_decode_output"]) < TOL


@torch.no_grad()
def test_clip_and_camera_projection(loaded, ref):
    model, _ = loaded
    assert rel(model.clip_embedding(ref["input_image"]), ref["clip_image_embedding"]) < TOL
    token = model.camera_projection(ref["clip_image_embedding"], ref["camera_T"])
    assert rel(token, ref["camera_conditioned_embedding"]) < TOL
    token2, concat = model.conditioning(ref["input_image"], ref["camera_T"])
    assert rel(token2, ref["camera_conditioned_embedding"]) < TOL


@torch.no_grad()
def test_unet_eps_uses_ema_weights(fixtures_dir, loaded, ref):
    model, _ = loaded
    eps = model.predict_noise(ref["unet_noisy_latent"], ref["unet_timesteps"], ref["camera_conditioned_embedding"],
                              ref["unet_concat_latent"])
    assert rel(eps, ref["unet_eps"]) < TOL
    plain, report = load_ldm_checkpoint(fixtures_dir / "tiny_zero123_ldm.ckpt", use_ema=False)
    eps_plain = plain.predict_noise(ref["unet_noisy_latent"], ref["unet_timesteps"],
                                    ref["camera_conditioned_embedding"], ref["unet_concat_latent"])
    assert not report.uses_ema and rel(eps_plain, ref["unet_eps"]) > 1e-2  # the plain weights differ


def test_schedule(loaded, ref):
    assert rel(loaded[0].alphas_cumprod, ref["alphas_cumprod"]) < 1e-6


@torch.no_grad()
def test_full_ddim_cfg_sample(loaded, ref):
    model, _ = loaded
    pipe = Zero123Pipeline(model)
    latents = pipe.sample(ref["input_image"], ref["camera_T"], num_inference_steps=10, guidance_scale=3.0, eta=0.0,
                          latents=ref["ddim_x_T"])
    assert rel(latents, ref["ddim_latents"]) < TOL
    image = ((model.decode_latents(latents) + 1) / 2).clamp(0, 1)
    assert rel(image, ref["ddim_image"]) < TOL
    # and through the public call with tensor input, one view per input image
    out = pipe(ref["input_image"][:1], elevations=[-17.188733853924695], azimuths=[68.75493541569878], radii=[0.0],
               num_inference_steps=10, latents=ref["ddim_x_T"][:1], output_type="pt", progress=False)
    assert out.images.shape == (1, 3, 32, 32)
