"""One SDS step of threestudio's own ``StableZero123Guidance`` (fixture ``threestudio_sds/``, see its README), replayed
through our loader, input preparation and :class:`zero123.guidance.SDSGuidance` with the fixture's draws given
through the public arguments: every stage matches at float32 rounding."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from zero123.guidance import SDSConfig, SDSGuidance
from zero123.loading import load_model
from zero123.pipelines.image_to_3d import prepare_reference
from zero123.pipelines.image_to_3d_config import preset_config
from zero123.rendering.cameras import orbit_cameras

TOL = 1e-5  # relative error (float32 matches land near 1e-6)


def rel(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return load_file(str(fixtures_dir / "threestudio_sds" / "threestudio_sds_ref.safetensors"))


@pytest.fixture(scope="module")
def model(fixtures_dir):
    m = load_model(fixtures_dir / "tiny_zero123_ldm.ckpt", variant="stable_zero123").eval()
    return m.requires_grad_(False)


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    # threestudio's input: the RGBA file as is (no recentring), INTER_AREA to the model size, float composite
    return prepare_reference(fixtures_dir / "threestudio_sds" / "cond_rgba_32.png", 32, 32, recentre=False)


@pytest.fixture(scope="module")
def guidance(model, reference):
    return SDSGuidance(model, reference.condition, SDSConfig())   # defaults = stable-zero123.yaml


def cameras(ref):
    return ref["camera_elevation_deg"], ref["camera_azimuth_deg"], ref["camera_distances"]


def render_cameras(ref):
    """The fixture's cameras as the ``Cameras`` batch the guidance takes."""
    return orbit_cameras(*cameras(ref), 20.0)


def test_input_view_is_prepared_as_threestudio(fixtures_dir, ref, reference):
    png = np.asarray(Image.open(fixtures_dir / "threestudio_sds" / "cond_rgba_32.png"))
    assert np.array_equal(png, ref["cond_image_rgba_uint8"].numpy())
    expected = ref["cond_rgb"] * 2 - 1
    assert rel(reference.condition, expected) < TOL
    # the uint8 (PIL) composite differs by up to 1/255: a coarser check would not tell them apart
    white = Image.alpha_composite(Image.new("RGBA", (32, 32), (255,) * 4), Image.fromarray(png, "RGBA"))
    pil = torch.from_numpy(np.asarray(white.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    assert rel(pil, expected) > 10 * TOL
    assert torch.equal(reference.mask[0, ..., 0], ref["cond_image_rgba_uint8"][..., 3] > 127)


@torch.no_grad()
def test_conditioning_camera_and_cfg_layout(ref, model, guidance):
    assert rel(guidance.clip_embedding, ref["cond_c_crossattn_clip"]) < TOL
    assert rel(guidance.concat_latent, ref["cond_c_concat_mode"]) < TOL
    cam = guidance.camera_embedding(*cameras(ref))
    assert cam.shape == (3, 4) and rel(cam, ref["get_cond_T"][:, 0]) < TOL
    assert abs(cam[0, 3].item() - 1.4835298) < 1e-6   # Stable Zero123: absolute polar angle of the input view
    token, concat = model.conditioning(None, cam, clip_embedding=guidance.clip_embedding,
                                       concat_latent=guidance.concat_latent)
    assert rel(token, ref["get_cond_clip_emb"]) < TOL
    c_crossattn, c_concat = model.guidance_conditioning(token, concat)
    assert rel(c_crossattn, ref["get_cond_c_crossattn"]) < TOL and rel(c_concat, ref["get_cond_c_concat"]) < TOL
    assert c_crossattn[:3].abs().max() == 0 and c_concat[:3].abs().max() == 0   # uncond (zeros) first
    # as plain Zero123 (T[3] = 0) the token is measurably different: the variant matters
    zero123_cam = cam.clone()
    zero123_cam[:, 3] = 0
    wrong, _ = model.conditioning(None, zero123_cam, clip_embedding=guidance.clip_embedding,
                                  concat_latent=guidance.concat_latent)
    assert rel(wrong, ref["get_cond_clip_emb"]) > 100 * TOL


def _expected(ref, case):
    """The fixture's tensors of one case; the up4 case stores fewer, the rest follow from its own tensors."""
    if case == "sds":
        names = ("latents", "latents_noisy", "noise_pred_cfg", "w", "grad", "dloss_dlatents")
        return {n: ref[f"sds_{n}"] for n in names}
    ac, t = ref["alphas_cumprod"], ref["up4_t"]
    a = ac[t].reshape(-1, 1, 1, 1)
    lat, noise = ref["up4_latents"], ref["up4_noise"]
    u, c = ref["up4_noise_pred_raw"].chunk(2)
    cfg = u + 3.0 * (c - u)
    grad = (1 - a) * (cfg - noise)
    return {"latents": lat, "latents_noisy": a ** 0.5 * lat + (1 - a) ** 0.5 * noise, "noise_pred_cfg": cfg,
            "w": 1 - a, "grad": grad, "dloss_dlatents": grad / 3}


@pytest.mark.parametrize("case", ["sds", "up4"])
def test_sds_step_matches_threestudio(ref, guidance, case):
    rgb = ref[f"{case}_rgb"].clone().requires_grad_(True)
    out = guidance(rgb, render_cameras(ref), 0, timesteps=ref[f"{case}_t"], noise=ref[f"{case}_noise"],
                   posterior_eps=ref[f"{case}_posterior_eps"])
    exp = _expected(ref, case)
    assert torch.equal(out.timesteps, ref[f"{case}_t"])
    assert rel(out.latents, exp["latents"]) < TOL
    assert rel(out.noisy_latents, exp["latents_noisy"]) < TOL
    assert rel(out.eps, exp["noise_pred_cfg"]) < TOL
    assert rel(out.weights, exp["w"]) < TOL
    assert rel(out.grad, exp["grad"]) < TOL
    assert rel(out.loss, ref[f"{case}_loss"]) < TOL and rel(out.grad_norm, ref[f"{case}_grad_norm"]) < TOL
    d_lat, d_rgb = torch.autograd.grad(out.loss, [out.latents, rgb])
    assert rel(d_lat, exp["dloss_dlatents"]) < TOL
    assert rel(d_rgb, ref[f"{case}_rgb_grad"]) < TOL


@torch.no_grad()
def test_seed_only_replay_draws_as_threestudio(ref, guidance):
    """threestudio ran with ``torch.manual_seed(0)`` (``1`` for up4); a generator with that seed gives the same
    three draws in the same order and element order (the noise as ``randn_like`` on channels_last latents)."""
    for case, seed in (("sds", 0), ("up4", 1)):
        out = guidance(ref[f"{case}_rgb"], render_cameras(ref), 0, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(out.timesteps, ref[f"{case}_t"])
        assert torch.equal(out.noise, ref[f"{case}_noise"])
        assert rel(out.latents, ref[f"{case}_latents"]) < TOL
        assert rel(out.loss, ref[f"{case}_loss"]) < TOL


def test_t_range_is_threestudios_at_every_step(guidance):
    def C(v0, v1, s0, s1, step):   # threestudio/utils/misc.py C(), 4-element form
        return v0 + (v1 - v0) * max(min(1.0, (step - s0) / (s1 - s0)), 0.0)

    for step in range(0, 301):
        assert guidance.timestep_bounds(step) == (int(1000 * C(0.7, 0.3, 50, 200, step)),
                                                  int(1000 * C(0.98, 0.8, 50, 200, step)))
    # steps where v0 + (v1 - v0) * (step - s0) / (s1 - s0) would round to the next integer
    assert [guidance.timestep_bounds(s)[0] for s in (71, 107, 155, 191)] == [643, 547, 420, 324]


def test_runs_of_other_lengths_use_integer_recipe_steps():
    cpu = preset_config("cpu")                       # 200 steps on the 600-step recipe
    assert [cpu.schedule_step(k) for k in (0, 1, 17, 199)] == [0, 3, 51, 597]
    odd = preset_config("default", steps=7)
    steps = [odd.schedule_step(k) for k in range(7)]
    assert steps == [k * 600 // 7 for k in range(7)] and all(isinstance(s, int) for s in steps)
    assert preset_config("default").schedule_step(71) == 71


def test_bad_given_draws_and_inputs_are_one_line_errors(fixtures_dir, ref, guidance):
    from zero123.errors import Zero123Error

    rgb, cams = ref["sds_rgb"], render_cameras(ref)
    bad = [{"timesteps": torch.tensor([876, 766])}, {"timesteps": torch.tensor([0, 1, 1000])},
           {"timesteps": torch.tensor([1.0, 2.0, 3.0])}, {"noise": torch.zeros(3, 4, 4, 4)},
           {"posterior_eps": torch.zeros(2, 4, 8, 8)}]
    for kwargs in bad:
        with pytest.raises(Zero123Error, match="timesteps|noise|posterior_eps"):
            guidance(rgb, cams, 0, **kwargs)
    with pytest.raises(Zero123Error, match="RGBA"):   # not recentred: needs its alpha, as threestudio's input
        prepare_reference(np.full((32, 32, 3), 200, np.uint8), 32, 32, recentre=False)
