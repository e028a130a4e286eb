"""The ``--scheduler`` samplers (DDIM, DPM-Solver++, UniPC) wired into ``Zero123Pipeline.sample``.

A toy denoiser with a known answer: for data ``x0 ~ N(mu, s^2)`` per element, the optimal eps-prediction
is ``eps(x, t) = sqrt(1-a) (x - sqrt(a) mu) / (a s^2 + 1 - a)`` (``a = alphas_cumprod[t]``) and the probability-flow
ODE (what DDIM / DPM-Solver++ / UniPC integrate) maps ``x`` at ``a_start`` to
``sqrt(a_end) mu + sqrt(a_end s^2 + 1 - a_end) (x - sqrt(a_start) mu) / sqrt(a_start s^2 + 1 - a_start)``.
The toy's condition is its mean ``mu`` (carried in the concat latent; the unconditional half, zeros, has mean 0),
so classifier-free guidance with scale g is exactly the Gaussian of mean ``g mu``: the guided sample has a closed form
too. The toy runs through the real ``Zero123Model.guided_noise`` (one batched call on ``[uncond; cond]``).

With ``s = 0`` (a point mass) every step of all three samplers is exact (each step's data prediction is ``mu``
itself), so the sample must equal the closed form to rounding whatever the step count: a wrong schedule, timestep
index, guidance combination or end point breaks it. With ``s > 0`` the solvers only converge to it (their last
step to the clean sample is first order), which the tests check as a trend.
"""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from zero123.models.zero123_model import Zero123Model
from zero123.pipelines.zero123_pipeline import Zero123Pipeline
from zero123.schedulers import (SCHEDULE_KWARGS, MultistepSampler, alphas_cumprod, betas_from_alphas_cumprod,
                                make_sampler)

class GaussianToy:
    """Stands in for ``Zero123Model`` in ``Zero123Pipeline.sample``: the exact eps of ``N(mu, s^2)`` data."""

    dtype, device, latent_channels = torch.float32, torch.device("cpu"), 4
    unet = SimpleNamespace(config=SimpleNamespace(sample_size=6))
    guidance_conditioning = staticmethod(Zero123Model.guidance_conditioning)
    guided_noise = Zero123Model.guided_noise  # the real classifier-free guidance

    def __init__(self, s: float = 0.0):
        self.s = s
        self.acp = alphas_cumprod().double()
        self.batches = []

    def conditioning(self, images, camera, clip_embedding, concat_latent):
        n = camera.shape[0]
        return torch.zeros(n, 1, 2), concat_latent.expand(n, -1, -1, -1)

    def predict_noise(self, x, t, token, concat):
        self.batches.append(x.shape[0])
        a = self.acp[t].view(-1, 1, 1, 1)
        return (torch.sqrt(1 - a) * (x.double() - torch.sqrt(a) * concat) / (a * self.s**2 + 1 - a)).float()


def exact(x, mu, a_start, a_end, s):
    z = (x.double() - a_start**0.5 * mu) / (a_start * s**2 + 1 - a_start) ** 0.5
    return a_end**0.5 * mu + (a_end * s**2 + 1 - a_end) ** 0.5 * z


def run_toy(scheduler, steps, guidance=3.0, spacing="zero123", s=0.0):
    toy = GaussianToy(s)
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(1, 4, 6, 6, generator=gen).double() * 0.3
    x = torch.randn(3, 4, 6, 6, generator=gen)
    out = Zero123Pipeline(toy).sample(None, torch.zeros(3, 4), steps, guidance, latents=x, clip_embedding=0,
                                      concat_latent=mu, scheduler=scheduler, timestep_spacing=spacing)
    sampler = make_sampler(scheduler, steps, spacing=spacing)
    acp = toy.acp
    a_start = acp[sampler.timesteps[0]].item()
    a_end = 1.0 if scheduler != "ddim" else acp[0].item()  # DDIM's last step goes to alphas_cumprod[0]
    ref = exact(x, guidance * mu, a_start, a_end, s)
    return (out.double() - ref).abs().max().item(), toy, len(sampler)


@pytest.mark.parametrize("scheduler, spacing", [("dpmpp", "zero123"), ("unipc", "zero123"), ("ddim", "zero123"),
                                               ("ddim", "diffusers")])
@pytest.mark.parametrize("steps", [7, 20])
def test_point_mass_sample_is_exact_with_one_guided_batch_per_step(scheduler, spacing, steps):
    err, toy, n = run_toy(scheduler, steps, spacing=spacing)
    assert n == (steps - 1 if (scheduler, spacing) == ("ddim", "zero123") else steps)
    assert toy.batches == [6] * n  # one UNet call per step, on the [uncond; cond] batch of 2 x 3 views
    assert err < 1e-4


@pytest.mark.parametrize("scheduler", ["dpmpp", "unipc", "ddim"])
def test_gaussian_sample_converges_to_the_flow(scheduler):
    errs = [run_toy(scheduler, n, guidance=1.0, s=0.5)[0] for n in (10, 25, 60)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.1


@pytest.mark.parametrize("name, cls", [("dpmpp", "DPMSolverMultistepScheduler"),
                                       ("unipc", "UniPCMultistepScheduler")])
def test_pipeline_equals_diffusers_own_loop(name, cls):
    """The pipeline's loop with our schedule (``trained_betas``) against diffusers' scheduler built from the
    ``scaled_linear`` config and stepped as diffusers' pipelines do."""
    import diffusers

    kw = {k: v for k, v in SCHEDULE_KWARGS.items() if k != "clip_sample"}
    sched = getattr(diffusers, cls)(**kw)
    sched.set_timesteps(12)
    toy = GaussianToy()
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(1, 4, 6, 6, generator=gen).double() * 0.3
    x = torch.randn(2, 4, 6, 6, generator=gen)
    ours = Zero123Pipeline(toy).sample(None, torch.zeros(2, 4), 12, 2.5, latents=x, clip_embedding=0,
                                       concat_latent=mu, scheduler=name)
    ref = x.clone()
    for t in sched.timesteps:
        tt = torch.full((2,), int(t))
        eps_u = toy.predict_noise(ref, tt, None, torch.zeros_like(mu))
        eps_c = toy.predict_noise(ref, tt, None, mu)
        ref = sched.step(eps_u + 2.5 * (eps_c - eps_u), t, ref).prev_sample
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)


def test_trained_betas_rebuild_the_schedule():
    acp = alphas_cumprod()
    betas = betas_from_alphas_cumprod(acp)
    assert torch.allclose(torch.cumprod(1 - betas, 0).float(), acp, rtol=1e-6)
    sampler = MultistepSampler("dpmpp", 10)
    assert torch.allclose(sampler.scheduler.alphas_cumprod, acp, rtol=1e-5)
    assert sampler.timesteps[0] == 999 and len(sampler) == 10


def test_steps_run_in_order_and_eta_is_ddim_only():
    from zero123.errors import Zero123Error

    sampler = make_sampler("unipc", 4)
    with pytest.raises(ValueError, match="in order"):
        sampler.step(1, torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))
    with pytest.raises(Zero123Error, match="ddim scheduler only"):
        make_sampler("dpmpp", 10, eta=1.0)
    with pytest.raises(Zero123Error, match="scheduler must be one of"):
        make_sampler("euler", 10)


def test_tiny_model_dpmpp_one_batched_unet_call_per_step(tiny_model):
    """The real model: --scheduler dpmpp with 4 steps is 4 UNet calls on a batch of 2 x views, and differs from DDIM's
    sample of the same start noise (a different sampler really ran)."""
    pipe = Zero123Pipeline(tiny_model)
    calls = []
    hook = tiny_model.unet.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        image = torch.zeros(1, 3, 32, 32)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        outs = {s: pipe.sample(image, pipe.camera_batch([0, 10], [30, 60]), 4, 3.0, latents=x, scheduler=s)
                for s in ("dpmpp", "ddim")}
    finally:
        hook.remove()
    assert calls == [4] * 4 + [4] * 3  # dpmpp: 4 evaluations; ddim's 4 steps visit 3 timesteps
    assert torch.isfinite(outs["dpmpp"]).all() and not torch.allclose(outs["dpmpp"], outs["ddim"])


def test_views_cli_scheduler_option(tmp_path, fixtures_dir):
    from PIL import Image

    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 40), (250, 250, 250)).save(photo)
    res = subprocess.run([sys.executable, "-m", "zero123.cli", "views", str(photo), "--scheduler", "dpmpp",
                          "--eta", "1", "--checkpoint", str(fixtures_dir / "tiny_zero123_ldm.ckpt"), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "applies to the ddim scheduler only" in res.stderr


def test_graph_cache_runs_eagerly_before_capture_after():
    """``capture_after=2``: the first two runs of a configuration are eager (``run`` returns None) and counted per
    configuration (the capture itself needs CUDA: bench/device/views_speed.sh)."""
    from zero123.pipelines.graphed_sampler import GraphedSamplerCache

    cache = GraphedSamplerCache(model=None, capture_after=2)
    x, tok = torch.zeros(2, 4, 8, 8), torch.zeros(2, 1, 4)
    sampler = make_sampler("ddim", 10)
    assert cache.run(sampler, x, tok, x, 3.0) is None and cache.run(sampler, x, tok, x, 3.0) is None
    assert cache.run(make_sampler("ddim", 20), x, tok, x, 3.0) is None  # another configuration: its own count
    assert list(cache.eager_runs.values()) == [2, 1] and not cache.loops


def test_reset_restarts_a_multistep_loop():
    """What the CUDA-graph loop relies on (it runs a warm-up loop, then the captured one, on one sampler)."""
    toy, mu = GaussianToy(0.5), torch.full((1, 4, 2, 2), 0.2, dtype=torch.float64)
    x0 = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    sampler = make_sampler("dpmpp", 6)
    assert sampler.graphable and not make_sampler("unipc", 6).graphable
    outs = []
    for _ in range(2):
        sampler.reset()
        x = x0
        for i, t in enumerate(sampler.timesteps.tolist()):
            x = sampler.step(i, x, toy.predict_noise(x, torch.tensor([t]), None, mu))
        outs.append(x)
    assert torch.equal(outs[0], outs[1])
