"""DDIM timesteps and update against zero123's DDIMSampler conventions and diffusers' DDIMScheduler."""

import pytest
import torch

from zero123.schedulers import DDIMSampler, ldm_ddim_timesteps, make_ddim_scheduler


def test_ldm_timesteps_drop_the_last():
    assert ldm_ddim_timesteps(10).tolist() == [801, 701, 601, 501, 401, 301, 201, 101, 1]
    t50 = ldm_ddim_timesteps(50)
    assert len(t50) == 49 and t50[0] == 961 and t50[-1] == 1


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_equals_diffusers(eta):
    sampler = DDIMSampler(10, eta=eta)
    sched = make_ddim_scheduler()
    sched.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(sampler.timesteps.tolist()):
        eps = torch.randn(2, 4, 8, 8, generator=gen)
        noise = torch.randn(2, 4, 8, 8, generator=gen)
        ours = sampler.step(i, x, eps, noise)
        ref = sched.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5), (i, t)
        x = ref
