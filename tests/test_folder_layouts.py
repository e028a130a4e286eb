"""Diffusers-format folder layouts as published (kxic, bennyguo, ashawkey) and the one we write."""

import json
import sys
import types
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from zero123.errors import CheckpointError
from zero123.loading import load_model, save_pretrained
from zero123.pipelines.zero123_pipeline import Zero123Pipeline

#: bennyguo/zero123-xl-diffusers and ashawkey/*-diffusers (threestudio's / DreamGaussian's ``zero123.py``)
ZERO123_PIPELINE_INDEX = {
    "_class_name": "Zero123Pipeline", "_diffusers_version": "0.19.3",
    "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"], "requires_safety_checker": True,
    "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
CLIP_CAMERA_PROJECTION_CONFIG = {"_class_name": "CLIPCameraProjection", "_diffusers_version": "0.19.3",
                                 "additional_embeddings": 4, "embedding_dim": 768}


@pytest.fixture(scope="module")
def single_file_models(fixtures_dir):
    """The tiny original checkpoint loaded with its EMA weights (and its sample) and with its plain weights."""
    ckpt = fixtures_dir / "tiny_zero123_ldm.ckpt"
    ema = load_model(ckpt)
    return ema, load_model(ckpt, use_ema=False), _sample(ema)


@torch.no_grad()
def _sample(model, spacing="zero123"):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    x_t = torch.randn(2, 4, 8, 8, generator=gen)
    return Zero123Pipeline(model)(image, [10, -5], [30, 200], num_inference_steps=3, latents=x_t, output_type="pt",
                                  progress=False, timestep_spacing=spacing).images


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _strip_meta(folder):
    """A published folder has none of our metadata files."""
    (folder / "zero123.json").unlink()
    return folder


def _to_zero123_pipeline_layout(folder, fp16=False, ema_unet=None):
    """Rewrite a written folder as bennyguo / ashawkey publish theirs: ``clip_camera_projection/`` with ``proj.*``,
    and (``fp16``) every weight file as ``<name>.fp16.safetensors``, the UNet also as ``.fp16_ema`` from
    ``ema_unet``."""
    _strip_meta(folder)
    (folder / "model_index.json").write_text(json.dumps(ZERO123_PIPELINE_INDEX, indent=2))
    cc = folder / "cc_projection"
    proj = folder / "clip_camera_projection"
    proj.mkdir()
    sd = load_file(cc / "diffusion_pytorch_model.safetensors")
    save_file({k.replace("projection.", "proj."): v for k, v in sd.items()},
              proj / "diffusion_pytorch_model.safetensors")
    (proj / "config.json").write_text(json.dumps(CLIP_CAMERA_PROJECTION_CONFIG, indent=2))
    for f in cc.iterdir():
        f.unlink()
    cc.rmdir()
    if fp16:
        for f in list(folder.glob("*/*.safetensors")):
            save_file({k: v.half() for k, v in load_file(f).items()}, f.with_suffix(".fp16.safetensors"))
            f.unlink()
        ema = {k: v.half().contiguous() for k, v in ema_unet.state_dict().items()}
        save_file(ema, folder / "unet" / "diffusion_pytorch_model.fp16_ema.safetensors")
    return folder


def _half_rounded(model):
    import copy

    return copy.deepcopy(model).half().float()


def test_written_folder_has_the_published_kxic_layout(tmp_path, tiny_model):
    folder = save_pretrained(tiny_model, tmp_path / "out")
    index = json.loads((folder / "model_index.json").read_text())
    from diffusers import __version__

    assert index == {"_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": __version__,
                     "cc_projection": ["pipeline_zero1to3", "CCProjection"],
                     "feature_extractor": ["transformers", "CLIPImageProcessor"],
                     "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
                     "requires_safety_checker": True, "safety_checker": [None, None],
                     "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
                     "vae": ["diffusers", "AutoencoderKL"]}
    cc = folder / "cc_projection"
    assert sorted(p.name for p in cc.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert json.loads((cc / "config.json").read_text()) == {"_class_name": "CCProjection",
                                                           "_diffusers_version": __version__}
    assert sorted(load_file(cc / "diffusion_pytorch_model.safetensors")) == ["projection.bias", "projection.weight"]
    assert json.loads((folder / "zero123.json").read_text()) == {"variant": "zero123"}


def test_diffusers_resolves_every_component_of_a_written_folder(tmp_path, tiny_model, monkeypatch):
    """diffusers' own ``from_pretrained`` machinery loads each component named in ``model_index.json``; the
    community ``pipeline_zero1to3`` module is stood in for by a minimal one (a Linear named ``projection``, built
    from a config without arguments, as the published ``cc_projection/config.json`` has none)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
    from diffusers.configuration_utils import ConfigMixin
    from diffusers.models.modeling_utils import ModelMixin
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    class CCProjection(ModelMixin, ConfigMixin):  # the published signature, no register_to_config
        def __init__(self, in_channel=772, out_channel=768):
            super().__init__()
            self.projection = torch.nn.Linear(in_channel, out_channel)

    module = types.ModuleType("pipeline_zero1to3")
    module.CCProjection, module.ModelMixin = CCProjection, ModelMixin  # diffusers picks the load method by base
    monkeypatch.setitem(sys.modules, "pipeline_zero1to3", module)

    class Zero1to3Like(DiffusionPipeline):
        _optional_components = ["safety_checker", "feature_extractor"]

        def __init__(self, vae, image_encoder, unet, scheduler, safety_checker, feature_extractor, cc_projection,
                     requires_safety_checker: bool = True):
            super().__init__()
            self.register_modules(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                                  safety_checker=safety_checker, feature_extractor=feature_extractor,
                                  cc_projection=cc_projection)

    folder = save_pretrained(tiny_model, tmp_path / "out")
    pipe = Zero1to3Like.from_pretrained(folder)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.image_encoder, CLIPVisionModelWithProjection)
    assert isinstance(pipe.scheduler, DDIMScheduler) and isinstance(pipe.feature_extractor, CLIPImageProcessor)
    assert isinstance(pipe.cc_projection, CCProjection) and pipe.safety_checker is None
    for ours, theirs in ((tiny_model.unet, pipe.unet), (tiny_model.vae, pipe.vae),
                         (tiny_model.image_encoder, pipe.image_encoder),
                         (tiny_model.camera_projection, pipe.cc_projection)):
        assert _same_weights(ours, theirs)
    # the scheduler the community pipeline runs is our "diffusers" spacing (981 first for 50 steps)
    pipe.scheduler.set_timesteps(50)
    from zero123.schedulers import DDIMSampler

    assert torch.equal(pipe.scheduler.timesteps, DDIMSampler(50, spacing="diffusers").timesteps)
    assert int(pipe.scheduler.timesteps[0]) == 981


def test_cc_projection_config_names_other_widths():
    from zero123.loading.folder_layouts import cc_projection_config

    assert cc_projection_config(768, "0.42.1") == {"_class_name": "CCProjection", "_diffusers_version": "0.42.1"}
    assert cc_projection_config(256, "0.42.1") == {"_class_name": "CCProjection", "_diffusers_version": "0.42.1",
                                                   "in_channel": 260, "out_channel": 256}


def test_kxic_layout_gives_the_single_file_outputs(tmp_path, single_file_models):
    ema, _, reference = single_file_models
    folder = _strip_meta(save_pretrained(ema, tmp_path / "zero123-165000"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the folder's name says zero123: no warning
        model, report = load_model(folder, return_report=True)
    assert report.variant == "zero123" and report.extra["variant_from"] == "folder name 'zero123-165000'"
    assert torch.equal(_sample(model), reference)


def test_folder_variant_recorded_guessed_or_warned(tmp_path, tiny_model):
    stable = save_pretrained(tiny_model, tmp_path / "written")
    (stable / "zero123.json").write_text(json.dumps({"variant": "stable_zero123"}))
    assert load_model(stable).variant.value == "stable_zero123"
    guessed = _strip_meta(save_pretrained(tiny_model, tmp_path / "stable-zero123-diffusers"))
    assert load_model(guessed, return_report=True)[1].variant == "stable_zero123"
    snapshot = tmp_path / "models--ashawkey--stable-zero123-diffusers" / "snapshots" / "0123abc"
    snapshot.parent.mkdir(parents=True)
    guessed.rename(snapshot)
    assert load_model(snapshot).variant.value == "stable_zero123"
    unknown = _strip_meta(save_pretrained(tiny_model, tmp_path / "my_model"))
    with pytest.warns(UserWarning, match="--variant stable_zero123"):
        assert load_model(unknown).variant.value == "zero123"
    assert load_model(unknown, variant="stable_zero123").variant.value == "stable_zero123"
    (stable / "zero123.json").write_text(json.dumps({"variant": "zero123", "colour": "red"}))
    with pytest.warns(UserWarning, match="unknown field.*colour"):
        load_model(stable)


def test_bennyguo_layout_gives_the_single_file_outputs(tmp_path, single_file_models):
    ema, _, reference = single_file_models
    folder = _to_zero123_pipeline_layout(save_pretrained(ema, tmp_path / "zero123-xl-diffusers"))
    model, report = load_model(folder, return_report=True)
    assert report.variant == "zero123"
    assert torch.equal(_sample(model), reference)


def test_ashawkey_fp16_and_fp16_ema_files(tmp_path, single_file_models):
    """ashawkey/stable-zero123-diffusers style: ``.fp16`` weight files and a ``.fp16_ema`` UNet. Default: EMA."""
    ema, plain, _ = single_file_models
    folder = _to_zero123_pipeline_layout(save_pretrained(plain, tmp_path / "stable-zero123-diffusers"), fp16=True,
                                         ema_unet=ema.unet)
    model, report = load_model(folder, return_report=True)
    assert report.variant == "stable_zero123" and report.uses_ema
    assert report.extra["weight_files"] == {"unet": "fp16_ema", "vae": "fp16", "image_encoder": "fp16",
                                            "clip_camera_projection": "fp16"}
    model.camera_projection.register_to_config(variant="zero123")  # compare like with like
    assert torch.equal(_sample(model), _sample(_half_rounded(ema)))
    plain16, report = load_model(folder, weights_variant="fp16", variant="zero123", return_report=True)
    assert not report.uses_ema and report.extra["weight_files"]["unet"] == "fp16"
    assert _same_weights(plain16, _half_rounded(plain))
    with pytest.raises(CheckpointError, match="unet has no ema weights file.*it has: fp16_ema, fp16"):
        load_model(folder, weights_variant="ema")


def test_timestep_spacing_diffusers_matches_ddim_scheduler():
    from zero123.schedulers import DDIMSampler, make_ddim_scheduler

    for steps in (4, 10, 50, 999):
        scheduler = make_ddim_scheduler()
        scheduler.set_timesteps(steps)
        sampler = DDIMSampler(steps, spacing="diffusers")
        assert torch.equal(sampler.timesteps, scheduler.timesteps.long())
        # every step is diffusers' DDIMScheduler.step (eta 0)
        gen = torch.Generator().manual_seed(steps)
        x, eps = torch.randn(1, 4, 2, 2, generator=gen), torch.randn(1, 4, 2, 2, generator=gen)
        for i, t in enumerate(scheduler.timesteps[:3]):
            ref = scheduler.step(eps, t, x).prev_sample
            assert torch.allclose(sampler.step(i, x, eps), ref, rtol=1e-5, atol=1e-6)
    assert len(DDIMSampler(50)) == 49 and int(DDIMSampler(50).timesteps[0]) == 961


def test_timestep_spacing_changes_the_sample_and_is_checked(tiny_model):
    from zero123.errors import Zero123Error

    assert not torch.equal(_sample(tiny_model, "zero123"), _sample(tiny_model, "diffusers"))
    with pytest.raises(Zero123Error, match="timestep spacing must be one of zero123, diffusers"):
        _sample(tiny_model, "karras")
