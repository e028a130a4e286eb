"""The image-to-3D trainer with its renders back-propagated in parts (``Representation.render_backward`` under a
memory plan) takes the steps of whole renders: same losses and the same field, on the tiny fixture checkpoint."""

import numpy as np
import torch
from test_to3d import object_image  # noqa: E402  (tests/ is on sys.path under pytest)

from zero123.guidance import build_guidance
from zero123.loading import load_model
from zero123.pipelines.image_to_3d_config import preset_config
from zero123.pipelines.image_to_3d_reference import prepare_reference
from zero123.pipelines.image_to_3d_trainer import ImageTo3DTrainer
from zero123.representations import build_representation
from zero123.utils.memory import MemoryPlan


class SmallParts(MemoryPlan):
    """A plan whose parts hold at most ``n`` samples (the tiny preset's renders hold ~1200 each)."""

    def __init__(self, n):
        super().__init__(budget=1)
        self.n = n

    def limits(self, resident, guidance_images=0):
        return self.n, self.n


def _run(model, memory, steps=2):
    cfg = preset_config("tiny")
    ref = prepare_reference(object_image(64), cfg.reference.image_size, model.image_size, cfg.reference.recentre)
    rep = build_representation(cfg, "cpu", seed=3)
    trainer = ImageTo3DTrainer(rep, build_guidance(cfg, model, ref), ref, cfg, seed=3, memory=memory)
    losses = [dict(trainer.train_step()) for _ in range(steps)]
    return losses, {k: v.detach().clone() for k, v in rep.state_dict().items()}


def test_trainer_in_parts_takes_the_whole_render_steps(fixtures_dir, monkeypatch):
    import zero123.rendering.chunked as chunked

    model = load_model(fixtures_dir / "tiny_zero123_ldm.ckpt", device="cpu").eval().requires_grad_(False)
    parts = []
    real = chunked.parts_by_samples
    monkeypatch.setattr(chunked, "parts_by_samples", lambda *a: parts.append(len(real(*a))) or real(*a))
    whole, state_w = _run(model, None)
    assert set(parts) == {1}
    parts.clear()
    split, state_s = _run(model, SmallParts(300))
    assert min(parts) >= 3     # every render of every step went in parts
    for a, b in zip(whole, split):
        assert set(a) == set(b) and a["samples"] == b["samples"]
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-8, err_msg=k)
    for k, v in state_w.items():   # Adam steps of the same gradients (up to summation order)
        if v.is_floating_point():
            torch.testing.assert_close(state_s[k], v, rtol=1e-3, atol=1e-6)
        else:
            assert torch.equal(state_s[k], v), k
