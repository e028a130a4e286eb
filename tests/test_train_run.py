"""Whole training runs on CPU with the tiny sizes: learning, exact resume, the VAE stage, outputs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from zero123.errors import Zero123Error
from zero123.training.config import config_from_dict
from zero123.training.synthetic import write_synthetic_dataset
from zero123.training.trainer import Trainer, build_model, find_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than 2 threads on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _trainer(**cfg):
    """A Trainer with a fresh accelerate state (one process may build several in a test session)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Trainer(config_from_dict(cfg))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("views"), num_objects=3, views_per_object=3,
                                   image_size=32, val_objects=1, seed=1)


def _base(data_root, out, **kw):
    cfg = {"output_dir": str(out), "batch_size": 4, "log_every": 1, "checkpoint_every": 0, "export": False,
           "data": {"root": str(data_root), "num_workers": 0}, "model": {"preset": "tiny"},
           "sample": {"every": 0}}
    cfg.update(kw)
    return cfg


def test_a_few_steps_fit_a_handful_of_pairs(data_root, tmp_path):
    tr = _trainer(**_base(data_root, tmp_path, max_steps=12, optim={"warmup_steps": 0, "lr": 2e-3},
                          ema={"enabled": False}))
    tr.setup()
    # fixed training draws (fixed pairs and noise, no CFG dropout): a deterministic measure of the fit
    before = tr.evaluate_loss(8, tr.train_set, tr.collate)
    result = tr.train()
    after = tr.evaluate_loss(8, tr.train_set, tr.collate)
    assert result.step == 12
    assert after < 0.8 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert log[-1]["draws"] == 48 and log[-1]["global_batch"] == 4
    assert sum(r["loss"] for r in log[-4:]) < sum(r["loss"] for r in log[:4])


def test_min_snr_run_logs_the_weighted_and_the_plain_validation_loss(data_root, tmp_path):
    tr = _trainer(**_base(data_root, tmp_path, max_steps=2, val_every=2, val_draws=8,
                          objective={"snr_gamma": 1.0}, ema={"enabled": False}))
    tr.train()
    val = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines() if "val_loss" in line]
    assert len(val) == 1 and val[0]["step"] == 2
    again = tr.evaluate_losses()  # same fixed val draws, same weights: the same two numbers
    assert val[0]["val_loss"] == pytest.approx(again["loss"], rel=1e-6)
    assert val[0]["val_mse"] == pytest.approx(again["diffusion_loss"], rel=1e-6)
    assert val[0]["val_loss"] < val[0]["val_mse"]  # weights <= 1, < 1 for the draws with SNR(t) > 1


def test_resume_continues_exactly(data_root, tmp_path):
    # gradient accumulation, warm-up, the cosine lr decay and EMA all cross the resume point
    kw = dict(max_steps=5, batch_size=2, gradient_accumulation_steps=2, checkpoint_every=2,
              optim={"warmup_steps": 3, "decay": "cosine", "final_lr_factor": 0.1},
              ema={"enabled": True, "decay": 0.9})
    straight, split = tmp_path / "straight", tmp_path / "split"
    _trainer(**_base(data_root, straight, **kw)).train()
    first = _trainer(**_base(data_root, split, **kw)).train(max_steps=2)
    assert first.step == 2 and find_checkpoint(split).name == "step_00000002"
    with pytest.raises(Zero123Error, match="--resume latest"):
        _trainer(**_base(data_root, split, **kw)).train()  # a fresh run must not overwrite a run
    resumed = _trainer(**_base(data_root, split, **kw)).train(resume="latest")
    assert resumed.step == 5
    for name in ("model_0.safetensors", "ema.safetensors"):
        a = load_file(str(straight / "checkpoints" / "step_00000005" / name))
        b = load_file(str(split / "checkpoints" / "step_00000005" / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ema = load_file(str(straight / "checkpoints" / "step_00000005" / "ema.safetensors"))
    weights = load_file(str(straight / "checkpoints" / "step_00000005" / "model_0.safetensors"))
    k = "model.unet.conv_in.weight"
    assert not torch.equal(ema[k], weights[k])  # the EMA is a different average, and it was restored exactly
    logs = [[json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()] for d in (straight, split)]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert [r["lr"] for r in logs[0]] == [r["lr"] for r in logs[1]]
    # the lr of logged step s is set at optimizer step s - 1: warm-up, then the cosine halfway to 0.1 x lr
    lr = 1e-4
    expected = [lr * 1e-6, lr * (1e-6 + (1 - 1e-6) / 3), lr * (1e-6 + (1 - 1e-6) * 2 / 3), lr, lr * 0.55]
    assert [r["lr"] for r in logs[0]] == pytest.approx(expected, rel=1e-6)
    state = json.loads((split / "checkpoints" / "step_00000005" / "trainer_state.json").read_text())
    assert state["step"] == 5 and state["draws"] == 20
    with pytest.raises(Zero123Error, match="not a training checkpoint"):
        find_checkpoint(split, str(tmp_path))


def test_vae_stage_learns_and_exports_a_usable_vae(data_root, tmp_path):
    tr = _trainer(**_base(data_root, tmp_path, stage="vae", max_steps=8, export=True, ema={"enabled": False},
                          optim={"warmup_steps": 0, "vae_lr": 2e-3}, sample={"every": 8, "num_pairs": 2}))
    tr.setup()
    before = tr.evaluate_loss(4, tr.train_set, tr.collate)
    result = tr.train()
    after = tr.evaluate_loss(4, tr.train_set, tr.collate)
    assert after < 0.85 * before, (before, after)
    assert (tmp_path / "samples" / "step_00000008.png").is_file()
    cfg = json.loads((result.export_dir / "config.json").read_text())
    assert cfg["scaling_factor"] == pytest.approx(1.0 / tr.latent_std(), rel=1e-5)
    # model.vae_from puts exactly these weights (and the scaling factor) into a diffusion model
    from zero123.training.config import ModelConfig

    model = build_model(ModelConfig(preset="tiny", vae_from=str(result.export_dir)))
    assert model.scaling_factor == pytest.approx(cfg["scaling_factor"])
    sd = tr.model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in model.vae.state_dict().items())
    with pytest.raises(Zero123Error, match="vae_from"):
        build_model(ModelConfig(preset="tiny", vae_from=str(tmp_path / "nothing")))


def test_vae_decoder_only_keeps_the_encoder_and_the_latent_scale(data_root, tmp_path):
    first = _trainer(**_base(data_root, tmp_path / "a", stage="vae", max_steps=2, export=True,
                             ema={"enabled": False}, optim={"warmup_steps": 0, "vae_lr": 2e-3}))
    vae_dir = first.train().export_dir
    scale = json.loads((vae_dir / "config.json").read_text())["scaling_factor"]
    tr = _trainer(**_base(data_root, tmp_path / "b", stage="vae", max_steps=4, export=True, ema={"enabled": False},
                          optim={"warmup_steps": 0, "vae_lr": 2e-3},
                          model={"preset": "tiny", "vae_from": str(vae_dir), "vae_decoder_only": True}))
    tr.setup()
    start = {k: v.clone() for k, v in tr.model.state_dict().items()}
    before = tr.evaluate_loss(4, tr.train_set, tr.collate)
    out = tr.train().export_dir
    assert tr.evaluate_loss(4, tr.train_set, tr.collate) < before
    trained = load_file(out / "diffusion_pytorch_model.safetensors")
    enc = [k for k in start if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in start if k.startswith(("decoder.", "post_quant_conv."))]
    assert enc and dec
    assert all(torch.equal(trained[k], start[k]) for k in enc)  # the latent space is untouched
    assert sum(not torch.equal(trained[k], start[k]) for k in dec) > len(dec) // 2
    # the scaling factor is kept as it was (not re-estimated), so a UNet trained on these latents still fits
    assert json.loads((out / "config.json").read_text())["scaling_factor"] == scale
    with pytest.raises(Zero123Error, match="vae_decoder_only"):
        config_from_dict(_base(data_root, tmp_path / "c", model={"preset": "tiny", "vae_decoder_only": True}))


def test_resume_is_refused_on_another_frozen_vae(data_root, tmp_path):
    """A diffusion checkpoint records its frozen VAE (weights and scaling factor): resuming it on another VAE, whose
    latents the UNet was not trained on (and whose latent cache would be rebuilt from other weights), is refused."""
    from zero123.training.config import ModelConfig
    from zero123.training.trainer import build_vae, export_vae, vae_fingerprint

    vae = build_vae(ModelConfig(preset="tiny"), 32, seed=0)
    export_vae(vae, tmp_path / "vae_a")
    vae.register_to_config(scaling_factor=vae.config.scaling_factor * 2)
    export_vae(vae, tmp_path / "vae_scaled")  # same weights, other scale
    export_vae(build_vae(ModelConfig(preset="tiny"), 32, seed=1), tmp_path / "vae_b")

    def run(vae_dir, steps, resume=None):
        cfg = _base(data_root, tmp_path / "run", max_steps=steps, checkpoint_every=1, ema={"enabled": False},
                    model={"preset": "tiny", "vae_from": str(tmp_path / vae_dir)},
                    data={"root": str(data_root), "num_workers": 0, "cache_latents": True})
        return _trainer(**cfg).train(resume=resume)

    first = run("vae_a", 1)
    state = json.loads((first.checkpoint / "trainer_state.json").read_text())
    assert state["vae_sha256"] == vae_fingerprint(build_vae(ModelConfig(preset="tiny", vae_from=str(tmp_path / "vae_a"))))
    for other in ("vae_b", "vae_scaled"):
        with pytest.raises(Zero123Error, match="another VAE"):
            run(other, 2, resume="latest")
    assert run("vae_a", 2, resume="latest").step == 2


def test_cache_latents_trains_exactly_as_the_live_vae_pass(data_root, tmp_path):
    kw = dict(max_steps=3, batch_size=3, optim={"warmup_steps": 0, "lr": 1e-3}, ema={"enabled": True, "decay": 0.9})
    live = _trainer(**_base(data_root, tmp_path / "live", **kw))
    live.train()
    cached = _trainer(**_base(data_root, tmp_path / "cached", **kw,
                              data={"root": str(data_root), "num_workers": 0, "cache_latents": True}))
    cached.train()
    cache, ds = cached.latent_cache, cached.train_set
    assert len(cache) == sum(o.num_views for o in ds.objects) == 6
    assert "target" not in ds[(0, 0)] and "cond" in ds[(0, 0)]  # the loader reads only the input views
    # each row is the frozen VAE's posterior of its view (an encode of that one view, independently)
    vae = cached.model.vae
    for i, v in [(0, 0), (1, 2), (0, 1)]:
        dist = vae.encode(ds.load_view(i, v)[0][None]).latent_dist
        mean, std = cache.lookup(torch.tensor([i]), torch.tensor([v]))
        torch.testing.assert_close(mean, dist.mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(std, dist.std, rtol=1e-5, atol=1e-6)
    # same losses step by step, same weights after the run
    logs = [[json.loads(x)["loss"] for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("live", "cached")]
    assert len(logs[0]) == 3
    assert logs[1] == pytest.approx(logs[0], rel=1e-5)
    a = dict(live.model.unet.named_parameters())
    b = dict(cached.model.unet.named_parameters())
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert not all(torch.equal(a[k], p) for k, p in build_model(cached.config.model).unet.named_parameters())
    with pytest.raises(Zero123Error, match="view index"):
        cache.lookup(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(Zero123Error, match="cache_latents"):
        config_from_dict(_base(data_root, tmp_path / "c", stage="vae",
                               data={"root": str(data_root), "cache_latents": True}))
    with pytest.raises(Zero123Error, match="cache_latents"):
        config_from_dict(_base(data_root, tmp_path / "c", model={"preset": "tiny", "freeze_vae": False},
                               data={"root": str(data_root), "cache_latents": True}))


def test_compile_option_runs_the_objective_compiled_with_eager_compatible_checkpoints(data_root, tmp_path):
    """``compile: true`` asks accelerate for inductor; the run itself uses the ``aot_eager`` backend (the same
    dynamo capture and AOT-autograd backward, without minutes of C++ codegen on a CPU): same losses as eager,
    and its checkpoint resumes in an eager run exactly like an eager checkpoint."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from zero123.training.trainer import make_accelerator

    kw = dict(max_steps=4, checkpoint_every=2, optim={"warmup_steps": 0}, ema={"enabled": True, "decay": 0.9})
    AcceleratorState._reset_state(True)  # the accelerate state is a process-wide singleton
    GradientState._reset_state()
    assert make_accelerator(config_from_dict(_base(data_root, tmp_path / "x", compile=True, **kw))) \
        .state.dynamo_plugin.backend.value == "INDUCTOR"
    eager = _trainer(**_base(data_root, tmp_path / "eager", **kw)).train()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    compiled = Trainer(config_from_dict(_base(data_root, tmp_path / "compiled", **kw)),
                       accelerator=Accelerator(dynamo_backend="aot_eager"))
    first = compiled.train(max_steps=2)
    assert type(compiled.objective).__name__ == "OptimizedModule"
    resumed = _trainer(**_base(data_root, tmp_path / "compiled", **kw)).train(resume="latest")  # eager
    assert first.step == 2 and resumed.step == 4
    logs = [[json.loads(x)["loss"] for x in (d / "log.jsonl").read_text().splitlines()]
            for d in (tmp_path / "eager", tmp_path / "compiled")]
    assert logs[0] == pytest.approx(logs[1], rel=1e-4)
    a = load_file(str(eager.checkpoint / "model_0.safetensors"))
    b = load_file(str(resumed.checkpoint / "model_0.safetensors"))
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in a)
    # equal up to Adam's sign noise: a bias in front of a GroupNorm has a gradient of float-rounding size, which
    # Adam turns into lr-sized (1e-4) steps of either sign; everything else agrees far more closely
    assert all(torch.allclose(a[k], b[k], atol=5e-4) for k in a)
    close = sum(int(torch.isclose(a[k], b[k], atol=1e-6).sum()) for k in a) / sum(v.numel() for v in a.values())
    assert close > 0.95, close


def test_max_minutes_stops_with_a_checkpoint_and_resume_finishes_the_run(data_root, tmp_path, monkeypatch):
    import zero123.training.trainer as trainer_mod

    kw = dict(max_steps=4, batch_size=2, log_every=2, checkpoint_every=0, max_minutes=1.0, export=True,
              ema={"enabled": False})
    straight = _trainer(**_base(data_root, tmp_path / "straight", **{**kw, "max_minutes": None})).train()
    # a clock that jumps two minutes per reading: the budget is spent at the first log boundary (step 2)
    ticks = iter(range(0, 10**6, 120))
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: float(next(ticks)))
    chunk = _trainer(**_base(data_root, tmp_path / "split", **kw)).train()
    monkeypatch.undo()
    assert chunk.step == 2 and chunk.checkpoint.name == "step_00000002"
    assert (chunk.export_dir / "unet" / "config.json").is_file()  # a chunk still exports a usable model
    resumed = _trainer(**_base(data_root, tmp_path / "split", **kw)).train(resume="latest")
    assert resumed.step == 4
    a = load_file(str(straight.checkpoint / "model_0.safetensors"))
    b = load_file(str(resumed.checkpoint / "model_0.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Zero123Error, match="max_minutes"):
        config_from_dict(_base(data_root, tmp_path, max_minutes=0)).validate()


def test_fine_tuning_a_loaded_folder_trains_unet_and_projection(data_root, tmp_path):
    """init_from loads a model frozen for inference; fine-tuning must still update the UNet and the camera
    projection (a bug once trained only the image encoder), and leave the frozen VAE alone."""
    from zero123.loading import save_pretrained
    from zero123.models.configs import tiny_config

    src = tiny_config("zero123").build(seed=0)
    save_pretrained(src, tmp_path / "init")
    tr = _trainer(**_base(data_root, tmp_path / "run", max_steps=2, optim={"warmup_steps": 0, "lr": 1e-3},
                          ema={"enabled": False}, model={"init_from": str(tmp_path / "init")}))
    tr.setup()
    names = {n.split(".")[1] for n, _ in tr.named_trainable}
    assert {"unet", "camera_projection"} <= names and "vae" not in names
    tr.train()
    m = tr.accelerator.unwrap_model(tr.objective).model
    for part in ("unet", "camera_projection"):
        before = dict(getattr(src, part).named_parameters())
        changed = [n for n, p in getattr(m, part).named_parameters() if not torch.equal(p.detach().cpu(), before[n])]
        assert changed, part
    assert all(torch.equal(p.detach().cpu(), q) for p, q in zip(m.vae.parameters(), src.vae.parameters()))
