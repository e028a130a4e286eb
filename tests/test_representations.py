"""The Representation / Guidance interfaces: a toy representation and guidance, registered by name, run through
the unchanged trainer (hook order, loss weighting, state); checkpoint version 1 is converted; config keys."""

import argparse

import pytest
import torch

from zero123.errors import Zero123Error
from zero123.guidance import GUIDANCES, Guidance, GuidanceOutput, build_guidance
from zero123.guidance.losses import opaque_loss
from zero123.pipelines.image_to_3d_config import preset_config
from zero123.pipelines.image_to_3d_reference import ReferenceImage
from zero123.pipelines.image_to_3d_trainer import ImageTo3DTrainer, _upgrade_v1, load_checkpoint
from zero123.representations import REPRESENTATIONS, RenderResult, Representation, build_representation


class ToyRepresentation(Representation):
    """One colour and one opacity for every pixel; records the calls the trainer makes."""

    name = "toy"

    def __init__(self):
        super().__init__()
        self.colour = torch.nn.Parameter(torch.zeros(3))
        self.alpha = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    @classmethod
    def from_config(cls, config):
        return cls()

    def render(self, cameras, resolution, *, background, shading="albedo", ambient_ratio=1.0, with_normals=False,
               normal_perturb_std=0.0, generator=None):
        B = len(cameras)
        self.calls.append(("render", B, resolution))
        a = torch.sigmoid(self.alpha).expand(B, resolution, resolution, 1)
        rgb = torch.sigmoid(self.colour) * a + background.reshape(-1, 1, 1, 3).expand(B, 1, 1, 3) * (1 - a)
        return RenderResult(rgb=rgb, opacity=a, depth=torch.zeros_like(a), stats={"samples": B})

    def regularisers(self, out, *, with_sparsity):
        return {"opaque": opaque_loss(out.opacity), "toy_term": out.rgb.sum()}   # toy_term: no weight -> 0

    def make_optimizer(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def before_step(self, step, schedule_step, generator):
        self.calls.append(("before_step", step))

    def after_backward(self, step, schedule_step, optimizer):
        self.calls.append(("after_backward", step, self.colour.grad is not None))

    def after_step(self, step, schedule_step, optimizer):
        self.calls.append(("after_step", step))


class ToyGuidance(Guidance):
    name = "toy-guidance"
    loss_name = "sds"

    @classmethod
    def from_config(cls, config, model, reference):
        return cls()

    def __call__(self, rgb, cameras, schedule_step, *, generator=None, **draws):
        assert rgb.shape[0] == len(cameras)
        return GuidanceOutput(loss=rgb.mean())


class _Frozen(torch.nn.Module):
    """A stand-in for the diffusion model."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(REPRESENTATIONS, "toy", ToyRepresentation)
    monkeypatch.setitem(GUIDANCES, "toy-guidance", ToyGuidance)
    cfg = preset_config("tiny", overrides=["representation=toy", "guidance=toy-guidance"])
    ref = ReferenceImage(rgb=torch.rand(1, 8, 8, 3), mask=torch.rand(1, 8, 8, 1) > 0.5, condition=None,
                         rgba_image=None)
    model = _Frozen()
    return cfg, ref, model


def test_a_new_representation_and_guidance_run_through_the_trainer_by_config_key(toy):
    cfg, ref, model = toy
    rep = build_representation(cfg, "cpu", seed=0)
    guidance = build_guidance(cfg, model, ref)
    assert isinstance(rep, ToyRepresentation) and isinstance(guidance, ToyGuidance)
    assert not model.w.requires_grad   # the guidance's model is frozen
    tr = ImageTo3DTrainer(rep, guidance, ref, cfg, seed=0)
    before = rep.colour.detach().clone()
    losses = tr.train_step()
    B, res, rres = cfg.cameras.batch_sizes[0], cfg.cameras.resolutions[0], cfg.cameras.reference_resolutions[0]
    assert rep.calls == [("before_step", 0), ("render", B, res), ("render", 1, rres), ("after_backward", 0, True),
                         ("after_step", 0)]
    assert not torch.equal(before, rep.colour)
    # the total is the weighted sum of the logged terms; a term without a LossWeights entry counts 0
    lam = cfg.losses.at(cfg.schedule_step(0))
    assert {"z/sds", "z/opaque", "z/toy_term", "ref/rgb", "ref/mask", "ref/opaque", "ref/toy_term"} <= set(losses)
    total = sum(lam.get(k.split("/")[1], 0.0) * v for k, v in losses.items() if "/" in k)
    assert losses["loss"] == pytest.approx(total, rel=1e-5)
    assert losses["z/toy_term"] > 0 and losses["samples"] == B
    # the state round-trips into a new trainer; another representation's state is refused
    state = tr.state_dict()
    assert state["version"] == 2 and state["representation"] == "toy" and set(state["model"]) == {"colour", "alpha"}
    again = ImageTo3DTrainer(ToyRepresentation(), guidance, ref, cfg, seed=5)
    again.load_state_dict(state)
    assert again.step == 1 and torch.equal(again.representation.colour, rep.colour)
    with pytest.raises(Zero123Error, match="'toy' representation"):
        ImageTo3DTrainer(build_representation(preset_config("tiny"), "cpu"), guidance, ref, cfg).load_state_dict(state)


def test_unknown_parts_are_one_line_errors():
    with pytest.raises(Zero123Error, match="unknown representation 'voxels': use one of nerf"):
        preset_config("tiny", overrides=["representation=voxels"])
    with pytest.raises(Zero123Error, match="unknown guidance 'clip'"):
        preset_config("tiny", overrides=["guidance=clip"])
    with pytest.raises(Zero123Error, match="input elevation 120"):
        preset_config("tiny", overrides=["reference.elevation=120"])


def test_reference_section_and_the_cli_elevation_rule(tmp_path):
    from zero123.commands.to3d import config_sets_input_elevation

    cfg = preset_config("tiny", overrides=["reference.elevation=12", "reference.fovy=30"])
    assert (cfg.reference.elevation, cfg.reference.fovy, cfg.reference.image_size) == (12.0, 30.0, 64)
    f = tmp_path / "c.yaml"
    f.write_text("reference:\n  elevation: 8\n")
    ns = lambda config=None, overrides=(): argparse.Namespace(config=config, overrides=list(overrides))  # noqa: E731
    assert config_sets_input_elevation(ns(overrides=["reference.elevation=12"]))
    assert config_sets_input_elevation(ns(config=str(f)))
    assert not config_sets_input_elevation(ns(overrides=["reference.fovy=30"]))


def test_a_version_1_checkpoint_is_converted(tmp_path):
    cfg = preset_config("tiny", overrides=["reference.elevation=12"])
    rep = build_representation(cfg, "cpu", seed=0)
    model = rep.state_dict()
    # a version-1 file as the code before the interfaces wrote it (field/occupancy, sds.input_*, top-level keys)
    old_cfg = cfg.to_dict()
    ref = old_cfg.pop("reference")
    del old_cfg["representation"], old_cfg["guidance"]
    old_cfg.update(reference_image_size=ref["image_size"], recentre_input=ref["recentre"])
    old_cfg["sds"].update(input_elevation=ref["elevation"], input_azimuth=ref["azimuth"], input_radius=3.8)
    v1 = {"version": 1, "step": 3, "config": old_cfg, "losses": {},
          "field": {k[6:]: v for k, v in model.items() if k.startswith("field.")},
          "occupancy": {k[10:]: v for k, v in model.items() if k.startswith("occupancy.")}}
    torch.save(v1, tmp_path / "state.pt")
    state = load_checkpoint(tmp_path / "state.pt")
    assert state["version"] == 2 and state["representation"] == "nerf" and state["step"] == 3
    assert set(state["model"]) == set(model) and all(torch.equal(state["model"][k], v) for k, v in model.items())
    from zero123.pipelines.image_to_3d_config import ImageTo3DConfig

    assert ImageTo3DConfig.from_dict(state["config"]) == cfg
    assert _upgrade_v1(v1)["config"]["reference"]["elevation"] == 12.0
    torch.save({"version": 7, "model": {}}, tmp_path / "new.pt")
    with pytest.raises(Zero123Error, match="found version 7"):
        load_checkpoint(tmp_path / "new.pt")
