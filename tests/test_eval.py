"""Novel-view evaluation: metrics against hand-computed values and skimage, pairs, baselines, runner and CLI."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from zero123.camera import embedding_from_rt, spherical_from_position, world_to_camera_rt
from zero123.cli import main
from zero123.data import layout
from zero123.data.objects import procedural_sources
from zero123.data.render import DatasetRenderSettings, render_dataset
from zero123.errors import Zero123Error
from zero123.evaluation.metrics import LPIPS, PSNR_MAX_DB, load_lpips, psnr, ssim
from zero123.evaluation.runner import evaluate, pipeline_predictor, select_pairs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalds")
    render_dataset(procedural_sources(5, seed=3), root,
                   DatasetRenderSettings(image_size=32, views_per_object=4, samples=1, seed=3, test_fraction=0.4),
                   workers=1, progress=False)
    return root


# ---------------------------------------------------------------------------------------------------- metrics
def test_psnr_hand_computed():
    a = torch.full((1, 3, 8, 8), 0.25)
    b = torch.full((1, 3, 8, 8), 0.75)
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(1 / 0.25))  # 6.0206 dB
    c = b.clone()
    c[0, 0, 0, 0] = 0.0  # one channel of one pixel off by 0.75: MSE = 0.5625 / 192
    assert psnr(c, b).item() == pytest.approx(10 * math.log10(192 / 0.5625))
    assert psnr(b, b).item() == PSNR_MAX_DB
    batch = psnr(torch.stack([a[0], b[0]]), torch.stack([b[0], b[0]]))
    assert batch.shape == (2,) and batch[1] == PSNR_MAX_DB
    with pytest.raises(Zero123Error, match="shapes differ"):
        psnr(a, torch.zeros(1, 3, 4, 4))


def test_ssim_identical_constant_and_against_skimage():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((2, 3, 40, 36)))
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    # two constant images: no variance, SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    m1, m2, c1 = 0.2, 0.7, 0.01 ** 2
    got = ssim(torch.full((3, 16, 16), m1), torch.full((3, 16, 16), m2)).item()
    assert got == pytest.approx((2 * m1 * m2 + c1) / (m1 ** 2 + m2 ** 2 + c1), rel=1e-6)
    # random / noisy pairs agree with skimage's Gaussian-window SSIM
    y = (x + torch.from_numpy(rng.normal(0, 0.1, x.shape))).clamp(0, 1)
    ours = ssim(x, y)
    for i in range(2):
        ref = structural_similarity(x[i].permute(1, 2, 0).numpy(), y[i].permute(1, 2, 0).numpy(), channel_axis=-1,
                                    data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(ref, abs=1e-7)
    assert ssim(x, y).mean() < 0.95
    # an 11x11 pair has one valid window: Wang et al.'s formula by hand with the normalised Gaussian weights
    a, b = x[0, :, :11, :11], y[0, :, :11, :11]
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5 ** 2))
    w = (g[:, None] * g[None, :]) / g.sum() ** 2
    mu_a, mu_b = (w * a).sum((1, 2)), (w * b).sum((1, 2))
    va, vb = (w * a * a).sum((1, 2)) - mu_a ** 2, (w * b * b).sum((1, 2)) - mu_b ** 2
    cov = (w * a * b).sum((1, 2)) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    by_hand = ((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))).mean()
    assert ssim(a, b).item() == pytest.approx(by_hand.item(), abs=1e-9)
    with pytest.raises(Zero123Error, match="smaller than"):
        ssim(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))


def _random_lpips_state(net: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = LPIPS(net)
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("scaling_layer"):
            sd[k] = v.clone()
        elif k.startswith("lin"):
            sd[k] = torch.rand_like(v) * 0.1  # lpips' linear weights are non-negative
        else:
            std = (2.0 / max(1, v[0].numel())) ** 0.5 if v.ndim > 1 else 0.01
            sd[k] = torch.randn_like(v) * std
    return sd


def _lpips_alex_reference(sd, a, b):
    """Independent functional AlexNet-LPIPS (formulas of Zhang et al. 2018), inputs in [0,1]."""
    def conv(x, idx, name, **kw):
        return F.relu(F.conv2d(x, sd[f"net.{name}.{idx}.weight"], sd[f"net.{name}.{idx}.bias"], **kw))

    def feats(x):
        x = ((x * 2 - 1) - sd["scaling_layer.shift"]) / sd["scaling_layer.scale"]
        f1 = conv(x, 0, "slice1", stride=4, padding=2)
        f2 = conv(F.max_pool2d(f1, 3, 2), 3, "slice2", padding=2)
        f3 = conv(F.max_pool2d(f2, 3, 2), 6, "slice3", padding=1)
        f4 = conv(f3, 8, "slice4", padding=1)
        f5 = conv(f4, 10, "slice5", padding=1)
        return [f1, f2, f3, f4, f5]

    total = 0
    for k, (fa, fb) in enumerate(zip(feats(a), feats(b))):
        na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        w = sd[f"lin{k}.model.1.weight"][0, :, 0, 0]
        total = total + ((na - nb) ** 2 * w[None, :, None, None]).sum(1).mean((1, 2))
    return total


def test_lpips_loads_local_weights_and_matches_reference(tmp_path):
    sd = _random_lpips_state("alex")
    torch.save(sd, tmp_path / "alex.pth")
    model = load_lpips(tmp_path / "alex.pth")
    assert model.net_name == "alex"
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.random((2, 3, 64, 64))).float()
    b = (a + 0.2 * torch.from_numpy(rng.standard_normal((2, 3, 64, 64))).float()).clamp(0, 1)
    d = model(a, b)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(d, _lpips_alex_reference(sd, a, b).double(), rtol=1e-4)
    assert torch.allclose(model(a, a), torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(model(b, a), d, rtol=1e-5)
    # a VGG state dict is recognised too (safetensors)
    from safetensors.torch import save_file

    save_file(_random_lpips_state("vgg"), str(tmp_path / "vgg.safetensors"))
    vgg = load_lpips(tmp_path / "vgg.safetensors")
    assert vgg.net_name == "vgg" and vgg(a, a).abs().max() < 1e-9 and (vgg(a, b) > 0).all()
    with pytest.raises(Zero123Error, match="not found"):
        load_lpips(tmp_path / "none.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(Zero123Error, match="not an LPIPS state dict"):
        load_lpips(tmp_path / "other.pth")


# ------------------------------------------------------------------------------------------------- runner
def test_select_pairs_deterministic_with_correct_deltas(dataset):
    m = layout.read_manifest(dataset)
    test_ids = [o.id for o in m.objects_in("test")]
    assert len(test_ids) == 2
    p1 = select_pairs(dataset, "test", pairs_per_object=3, seed=0)
    p2 = select_pairs(dataset, "test", pairs_per_object=3, seed=0)
    assert p1 == p2 and len(p1) == 6 and {p.object_id for p in p1} == set(test_ids)
    assert select_pairs(dataset, "test", pairs_per_object=3, seed=1) != p1
    for p in p1:
        assert p.input_view != p.target_view
        cam_in = layout.read_view_camera(dataset, p.object_id, p.input_view)
        cam_out = layout.read_view_camera(dataset, p.object_id, p.target_view)
        ie, ia, ir = spherical_from_position(cam_in[:3, 3].double())
        te, ta, tr = spherical_from_position(cam_out[:3, 3].double())
        assert p.input_elevation == pytest.approx(ie.item(), abs=1e-4)
        assert p.delta_elevation == pytest.approx((te - ie).item(), abs=1e-4)
        assert p.delta_radius == pytest.approx((tr - ir).item(), abs=1e-5)
        assert -180 < p.delta_azimuth <= 180
        da = math.radians((ta - ia).item())
        assert math.cos(math.radians(p.delta_azimuth)) == pytest.approx(math.cos(da), abs=1e-5)
        assert math.sin(math.radians(p.delta_azimuth)) == pytest.approx(math.sin(da), abs=1e-5)
    # more pairs than exist: all ordered pairs once (4 views -> 12)
    assert len(select_pairs(dataset, "test", pairs_per_object=50, max_objects=1)) == 12
    with pytest.raises(Zero123Error, match="no 'val' objects"):
        select_pairs(dataset, "val")


@pytest.mark.parametrize("variant", ["zero123", "stable_zero123"])
def test_eval_pairs_condition_the_model_as_training_does(dataset, variant):
    """The pipeline's camera for an eval pair (changes in degrees + input elevation) equals the embedding the
    training data computes from the two stored matrices: eval and training speak the same camera convention."""
    from zero123.models.configs import tiny_config
    from zero123.pipelines.zero123_pipeline import Zero123Pipeline

    pipe = Zero123Pipeline(tiny_config(variant=variant).build(seed=0))
    for p in select_pairs(dataset, "test", pairs_per_object=6, seed=0):
        rt_in = world_to_camera_rt(layout.read_view_camera(dataset, p.object_id, p.input_view))
        rt_out = world_to_camera_rt(layout.read_view_camera(dataset, p.object_id, p.target_view))
        got = pipe.camera_batch([p.delta_elevation], [p.delta_azimuth], [p.delta_radius], p.input_elevation)
        torch.testing.assert_close(got[0], embedding_from_rt(variant, rt_out, rt_in), atol=2e-5, rtol=0)


def test_evaluate_oracle_input_and_baselines(dataset):
    pairs = select_pairs(dataset, "test", pairs_per_object=2, seed=0)
    targets = [layout.load_view(dataset, p.object_id, p.target_view)[0] for p in pairs]
    inputs = [layout.load_view(dataset, p.object_id, p.input_view)[0] for p in pairs]
    queue = list(targets)

    def oracle(image, de, da, dr, ie):
        assert image.shape == (1, 3, 32, 32) and image.min() >= -1 and image.max() <= 1
        return queue.pop(0)[None]

    res = evaluate(oracle, dataset, pairs, progress=False, method_name="oracle")
    assert res.methods["oracle"]["psnr"] == PSNR_MAX_DB and res.methods["oracle"]["ssim"] == pytest.approx(1.0)
    assert list(res.methods) == ["oracle", "input", "mean_train", "mean_target"]
    assert any("LPIPS skipped" in n for n in res.notes)
    # the 'input' baseline equals hand-computed PSNR/SSIM of input vs target
    t01 = (torch.stack(targets) + 1) / 2
    i01 = (torch.stack(inputs) + 1) / 2
    expect = 10 * torch.log10(1 / ((t01 - i01) ** 2).flatten(1).mean(1).double())
    assert res.methods["input"]["psnr"] == pytest.approx(expect.mean().item(), rel=1e-6)
    assert res.pairs[0]["input"]["psnr"] == pytest.approx(expect[0].item(), rel=1e-6)
    ref_ssim = np.mean([structural_similarity(i01[k].permute(1, 2, 0).double().numpy(),
                                              t01[k].permute(1, 2, 0).double().numpy(), channel_axis=-1,
                                              data_range=1.0, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False) for k in range(len(pairs))])
    assert res.methods["input"]["ssim"] == pytest.approx(ref_ssim, abs=1e-6)
    # mean_target is the per-pixel mean of the targets
    mean_t = (torch.stack(targets).double().mean(0) + 1) / 2
    expect_mt = psnr(mean_t.expand_as(t01), t01).mean().item()
    assert res.methods["mean_target"]["psnr"] == pytest.approx(expect_mt, rel=1e-5)
    # a model that returns its input scores exactly like the 'input' baseline
    res2 = evaluate(lambda x, *a: x, dataset, pairs, progress=False, baselines=["input"])
    assert res2.methods["model"]["psnr"] == pytest.approx(res2.methods["input"]["psnr"])
    # autoencode: the vae_target row scores each target passed through it (here: a darkening by 0.1)
    res3 = evaluate(None, dataset, pairs, progress=False, baselines=["input"],
                    autoencode=lambda y: (y - 0.2).clamp(-1, 1))
    assert list(res3.methods) == ["vae_target", "input"]
    dark = psnr((((torch.stack(targets) - 0.2).clamp(-1, 1)) + 1) / 2, t01)
    assert res3.methods["vae_target"]["psnr"] == pytest.approx(dark.mean().item(), rel=1e-6)
    # the table and the JSON
    assert "oracle" in res.table() and "mean_train" in res.table()
    with pytest.raises(Zero123Error, match="predict returned"):
        evaluate(lambda x, *a: x[:, :, :8], dataset, pairs, progress=False)


def test_mean_train_image_is_the_mean_of_the_training_views(dataset):
    from zero123.evaluation.runner import _mean_image

    train = layout.read_manifest(dataset).objects_in("train")
    views = [layout.load_view(dataset, o.id, v, 32)[0].double() for o in train for v in range(o.num_views)]
    full = _mean_image(dataset, train, 32)
    assert full.shape == (3, 32, 32)
    assert torch.allclose(full.double(), torch.stack(views).mean(0), atol=1e-6)
    # more views than the cap: the mean of a seeded sample of exactly `max_views` of them
    sample = _mean_image(dataset, train, 32, max_views=3)
    assert torch.equal(sample, _mean_image(dataset, train, 32, max_views=3))
    subsets = [torch.stack(c).mean(0) for c in __import__("itertools").combinations(views, 3)]
    assert min(float((sample.double() - m).abs().max()) for m in subsets) < 1e-6
    assert not torch.allclose(sample, full, atol=1e-3)


def test_pipeline_predictor_with_tiny_model(dataset, tiny_model):
    from zero123.pipelines.zero123_pipeline import Zero123Pipeline

    pipe = Zero123Pipeline.from_model(tiny_model)
    p = select_pairs(dataset, "test", pairs_per_object=1, seed=0)[0]
    x = layout.load_view(dataset, p.object_id, p.input_view, 32)[0][None]
    y1 = pipeline_predictor(pipe, num_inference_steps=2, seed=5)(x, p.delta_elevation, p.delta_azimuth,
                                                                   p.delta_radius, p.input_elevation)
    assert y1.shape == (1, 3, 32, 32) and y1.min() >= -1 and y1.max() <= 1
    # the runner calls the predictor the same way: same seed -> the same image -> PSNR computed by hand
    res = evaluate(pipeline_predictor(pipe, num_inference_steps=2, seed=5), dataset, [p], 32, progress=False)
    assert set(res.methods) == {"model", "input", "mean_train", "mean_target"}
    target = layout.load_view(dataset, p.object_id, p.target_view, 32)[0][None]
    assert res.methods["model"]["psnr"] == pytest.approx(psnr((y1 + 1) / 2, (target + 1) / 2).item(), rel=1e-9)
    # a different evaluation size is resized to the model's size and back
    x48 = F.interpolate(x, size=(48, 48), mode="bilinear")
    assert pipeline_predictor(pipe, 2)(x48, 0.0, 30.0, 0.0, 0.0).shape == (1, 3, 48, 48)


def test_pipeline_predictor_mean_of_samples(dataset, tiny_model):
    """num_samples=K returns the pixel mean of K samples whose start noise is drawn as [K,4,h,w] from the
    predictor's generator: checked against K separate pipeline calls, each given its slice of that noise."""
    from zero123.pipelines.zero123_pipeline import Zero123Pipeline

    pipe = Zero123Pipeline.from_model(tiny_model)
    p = select_pairs(dataset, "test", pairs_per_object=1, seed=0)[0]
    x = layout.load_view(dataset, p.object_id, p.input_view, 32)[0][None]
    cam = (p.delta_elevation, p.delta_azimuth, p.delta_radius, p.input_elevation)
    y = pipeline_predictor(pipe, num_inference_steps=3, seed=5, num_samples=3)(x, *cam)
    h = tiny_model.unet.config.sample_size
    noise = torch.randn((3, tiny_model.latent_channels, h, h), generator=torch.Generator().manual_seed(5 * 1_000_003))
    singles = [pipe(x, [cam[0]], [cam[1]], [cam[2]], input_elevation=cam[3], num_inference_steps=3,
                    latents=noise[i:i + 1], output_type="pt", progress=False).images for i in range(3)]
    assert min(float((singles[i] - singles[j]).abs().max()) for i, j in ((0, 1), (0, 2), (1, 2))) > 1e-3
    expected = torch.cat(singles).mean(0, keepdim=True) * 2 - 1
    assert y.shape == (1, 3, 32, 32)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    with pytest.raises(Zero123Error, match="num_samples"):
        pipeline_predictor(pipe, num_samples=0)


def test_cli_eval_baselines_and_checkpoint(dataset, tmp_path, capsys, fixtures_dir):
    out = tmp_path / "res.json"
    torch.save(_random_lpips_state("alex"), tmp_path / "lp.pth")
    rc = main(["eval", "--data", str(dataset), "--baselines-only", "--out", str(out), "--quiet",
               "--lpips-weights", str(tmp_path / "lp.pth"), "--image-size", "64"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "LPIPS" in text and "mean_target" in text
    data = json.loads(out.read_text())
    assert set(data["methods"]) == {"input", "mean_train", "mean_target"}
    assert "lpips" in data["methods"]["input"] and data["settings"]["image_size"] == 64
    assert len(data["pairs"]) == 8
    rc = main(["eval", "--data", str(dataset), "--checkpoint", str(fixtures_dir / "tiny_zero123_ldm.ckpt"),
               "--steps", "2", "--pairs-per-object", "1", "--max-objects", "1", "--quiet", "--device", "cpu",
               "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "tiny_zero123_ldm.ckpt" in text and "LPIPS skipped" in text
    data = json.loads(out.read_text())
    assert data["settings"]["image_size"] == 32 and data["settings"]["steps"] == 2
    assert data["settings"]["noise_scale"] == 1.0  # an LDM checkpoint: standard sampling
    # vae_target: each target encoded (posterior mean) and decoded by the checkpoint's own VAE
    from zero123.loading import load_ldm_checkpoint

    model = load_ldm_checkpoint(fixtures_dir / "tiny_zero123_ldm.ckpt", dtype=torch.float32, device="cpu")[0]
    row = data["pairs"][0]
    y = layout.load_view_image(dataset, row["object_id"], row["target_view"], 32)[None]
    with torch.no_grad():
        dist = model.vae.encode(y).latent_dist
        rec = model.vae.decode(dist.mean).sample.clamp(-1, 1)
    assert row["vae_target"]["psnr"] == pytest.approx(psnr((rec + 1) / 2, (y + 1) / 2).item(), abs=1e-4)
    rc = main(["eval", "--data", str(dataset), "--checkpoint", str(fixtures_dir / "tiny_zero123_ldm.ckpt"),
               "--steps", "2", "--samples", "2", "--pairs-per-object", "1", "--max-objects", "1", "--quiet",
               "--device", "cpu", "--noise-scale", "0.25", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "tiny_zero123_ldm.ckpt (mean of 2 samples)" in text
    assert len({line.index("±") for line in text.splitlines() if "±" in line}) == 1  # columns stay aligned
    data = json.loads(out.read_text())
    assert data["settings"]["samples_per_view"] == 2 and "tiny_zero123_ldm.ckpt (mean of 2 samples)" in data["methods"]
    assert data["settings"]["noise_scale"] == 0.25
    rc = main(["eval", "--data", str(dataset), "--noise-scale", "2", "--device", "cpu"])
    assert rc == 2 and "noise scale must be in [0, 1]" in capsys.readouterr().err
    rc = main(["eval", "--data", str(dataset), "--samples", "0", "--device", "cpu"])
    assert rc == 2 and "--samples must be >= 1" in capsys.readouterr().err
    rc = main(["eval", "--data", str(tmp_path / "missing"), "--baselines-only"])
    assert rc == 2 and "not a rendered dataset" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- breakdown
def test_breakdown_by_azimuth_and_wins_match_hand_computed_values(tmp_path, capsys):
    from zero123.evaluation.breakdown import by_azimuth, main as breakdown_main, paired_difference, wins

    def pair(daz, model, inp):
        return {"delta_azimuth": daz, "m": {"psnr": model[0], "ssim": model[1]},
                "input": {"psnr": inp[0], "ssim": inp[1]}}

    result = {"methods": {"m": {}, "input": {}},
              "pairs": [pair(10.0, (12, 0.5), (10, 0.6)), pair(-25.0, (14, 0.7), (16, 0.8)),  # bin 0-30
                        pair(30.0, (20, 0.9), (11, 0.1)),                                      # bin 30-60 (edge)
                        pair(-180.0, (8, 0.2), (9, 0.3))]}                                     # last bin, edge
    rows = by_azimuth(result)
    assert [(r["lo"], r["hi"], r["n"]) for r in rows] == [(0, 30, 2), (30, 60, 1), (135, 180, 1)]
    assert rows[0]["m"]["psnr"] == pytest.approx(13.0) and rows[0]["m"]["ssim"] == pytest.approx(0.6)
    assert rows[0]["input"]["psnr"] == pytest.approx(13.0) and rows[0]["input"]["ssim"] == pytest.approx(0.7)
    assert rows[2]["m"]["psnr"] == pytest.approx(8.0)
    assert wins(result, "m", "input") == 2 and wins(result, "m", "input", "ssim") == 1
    # differences 2, -2, 9, -1 dB: mean 2, sample variance 74 / 3; SSIM -0.1, -0.1, 0.8, -0.1: 0.125, 0.6075 / 3
    assert paired_difference(result, "m", "input") == pytest.approx((2.0, math.sqrt(74 / 3 / 4)))
    assert paired_difference(result, "m", "input", "ssim") == pytest.approx((0.125, math.sqrt(0.6075 / 3 / 4)))
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(result))
    assert breakdown_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| 0-30 | 2 | 13.00 / 0.600 | 13.00 / 0.700 |" in out
    assert "m beats input on PSNR in 2 of 4 pairs, on SSIM in 1; mean difference +- standard error: PSNR +2.00 +- " \
           "2.48 dB, SSIM +0.125 +- 0.225" in out
    # the vae_target oracle gets a column but no comparisons
    result["methods"]["vae_target"] = {}
    for row in result["pairs"]:
        row["vae_target"] = {"psnr": 30.0, "ssim": 0.95}
    path.write_text(json.dumps(result))
    assert breakdown_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| 0-30 | 2 | 13.00 / 0.600 | 13.00 / 0.700 | 30.00 / 0.950 |" in out and "vae_target beats" not in out
    assert breakdown_main([str(tmp_path / "missing.json")]) == 2
    assert "eval result not found" in capsys.readouterr().out
