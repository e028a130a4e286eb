"""The image-to-3D trainer: one optimisation step over swappable parts, and its resumable checkpoint.

:class:`ImageTo3DTrainer` receives a :class:`zero123.representations.Representation` and a
:class:`zero123.guidance.Guidance` already built (``to3d`` builds them from the config keys ``representation`` and
``guidance``) and knows neither's kind. Each training step, as threestudio's ``zero123-system`` with
``ref_or_zero123: accumulate``:

  * ``representation.before_step``;
  * random views (:func:`zero123.rendering.cameras.sample_cameras`, random backgrounds and shading):
    ``lambda_<guidance> * guidance + the representation's regularisers (with sparsity)``, back-propagated;
  * the reference view (the camera of ``cfg.reference``, white background, diffuse shading):
    ``lambda_rgb * MSE(rgb) + lambda_mask * MSE(mask) + its regularisers (no sparsity)``, back-propagated (the two
    parts one after the other give the same gradient as their sum with half the peak memory);
  * ``representation.after_backward``, one optimiser step, ``representation.after_step``.

The checkpoint (``state.pt``, version 2): ``{"version": 2, "representation": name, "model":
representation.state_dict(), "optimizer", "cpu_rng", "dev_rng", "step", "config", "losses"}``; a version-1 file
(before the representation interface) is read by :func:`load_checkpoint` and converted.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import Zero123Error
from ..rendering.cameras import orbit_cameras, sample_cameras
from .image_to_3d_config import ImageTo3DConfig
from .image_to_3d_reference import ReferenceImage, resize_reference

CHECKPOINT_NAME = "state.pt"
CHECKPOINT_VERSION = 2


# ----- checkpoints -------------------------------------------------------------------------------------------
def _atomic_torch_save(obj, path: Path) -> Path:
    from ..export.writers import atomic_write_with

    return atomic_write_with(path, lambda tmp: torch.save(obj, tmp))


def checkpoint_path(path) -> Path:
    """``path`` itself if it is a file, else ``<path>/checkpoints/state.pt``."""
    p = Path(path)
    return p if p.is_file() else p / "checkpoints" / CHECKPOINT_NAME


def _upgrade_v1(state: dict) -> dict:
    """A version-1 checkpoint (NeRF only; the input camera in ``config.sds``) as version 2."""
    cfg = dict(state["config"])
    sds = dict(cfg.get("sds", {}))
    ref = {"elevation": sds.pop("input_elevation", 5.0), "azimuth": sds.pop("input_azimuth", 0.0),
           "distance": sds.pop("input_radius", 3.8), "fovy": cfg.get("cameras", {}).get("fovy", 20.0),
           "image_size": cfg.pop("reference_image_size", 512), "recentre": cfg.pop("recentre_input", True)}
    cfg.update(sds=sds, reference=ref, representation="nerf")
    model = {f"field.{k}": v for k, v in state["field"].items()}
    model.update({f"occupancy.{k}": v for k, v in state["occupancy"].items()})
    rest = {k: v for k, v in state.items() if k not in ("field", "occupancy")}
    return {**rest, "version": CHECKPOINT_VERSION, "representation": "nerf", "model": model, "config": cfg}


def load_checkpoint(path) -> dict:
    """The state of an image-to-3D checkpoint (a run's folder or its ``state.pt``), read with
    ``weights_only=True``; version 1 is converted to version 2. Anything else is a one-line error."""
    p = checkpoint_path(path)
    if not p.is_file():
        raise Zero123Error(f"no image-to-3D checkpoint found at {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / not a checkpoint
        raise Zero123Error(f"{p} is not a readable image-to-3D checkpoint ({type(exc).__name__})") from None
    version = state.get("version") if isinstance(state, dict) else None
    if version == 1 and "field" in state and "occupancy" in state:
        state = _upgrade_v1(state)
    elif version != CHECKPOINT_VERSION or "model" not in state:
        raise Zero123Error(f"{p} is not an image-to-3D checkpoint of version {CHECKPOINT_VERSION} "
                           f"(found version {version})")
    return state


# ----- the trainer -------------------------------------------------------------------------------------------
class ImageTo3DTrainer:
    """Holds the representation, its optimiser, the guidance and the random generators of one run.

    Args:
        representation: a built :class:`zero123.representations.Representation` (on the run's device).
        guidance: a built :class:`zero123.guidance.Guidance` (its model frozen: ``to3d`` puts it in eval mode
            without gradients; only the representation is trained).
        reference: the prepared input view (:func:`zero123.pipelines.image_to_3d_reference.prepare_reference`).
        config: the run's :class:`ImageTo3DConfig`.
        seed: seed of the generators: ``cpu_gen`` (cameras, backgrounds, shading choices) and ``dev_gen``
            (``seed + 1``, on the representation's device: sample offsets, guidance draws, hook draws).
        memory: a :class:`zero123.utils.memory.MemoryPlan` (``to3d(max_memory=...)``): each step's renders are
            back-propagated in parts that keep to it (``Representation.render_backward``; the same gradient),
            and a run that cannot fit is a one-line error here. None: whole renders.
    """

    def __init__(self, representation, guidance, reference: ReferenceImage, config: ImageTo3DConfig,
                 seed: int = 0, memory=None):
        self.representation, self.guidance, self.reference, self.cfg = representation, guidance, reference, config
        self.memory = memory
        self.device = representation.device
        self.optimizer = representation.make_optimizer()
        self.cpu_gen = torch.Generator().manual_seed(seed)
        self.dev_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.step = 0
        self.last_losses: dict = {}
        self._ref_cache: dict = {}
        if memory is not None and memory.budget is not None:   # a run that cannot fit fails now, before a step
            for b in config.cameras.batch_sizes:
                self._limits(b)

    # ----- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "representation": self.representation.name, "step": self.step,
                "config": self.cfg.to_dict(), "model": self.representation.state_dict(),
                "optimizer": self.optimizer.state_dict(), "cpu_rng": self.cpu_gen.get_state(),
                "dev_rng": self.dev_gen.get_state(), "losses": dict(self.last_losses)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("representation") != self.representation.name:
            raise Zero123Error(f"the checkpoint holds a {state.get('representation')!r} representation, "
                               f"this run a {self.representation.name!r} one")
        self.representation.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.cpu_gen.set_state(state["cpu_rng"])
        self.dev_gen.set_state(state["dev_rng"].to(torch.uint8).cpu())
        self.step = int(state["step"])
        self.last_losses = dict(state.get("losses", {}))

    def save(self, path: Path) -> Path:
        return _atomic_torch_save(self.state_dict(), path)

    # ----- one step ---------------------------------------------------------------------------------------
    def reference_cameras(self):
        """The input view's camera (``cfg.reference``) as a one-camera batch."""
        r = self.cfg.reference
        return orbit_cameras(r.elevation, r.azimuth, r.distance, r.fovy)

    def _reference_targets(self, res: int):
        if res not in self._ref_cache:
            self._ref_cache = {res: resize_reference(self.reference, res, self.device)}
        return self._ref_cache[res]

    def _shading(self, sched_step: float):
        m = self.cfg.material
        r = torch.rand(3, generator=self.cpu_gen).tolist()
        if sched_step < m.ambient_only_steps or r[0] > m.diffuse_prob:
            return "albedo"
        return "textureless" if r[1] < m.textureless_prob else "diffuse"

    def _limits(self, guidance_images: int) -> dict:
        """``max_whole_samples`` / ``max_samples`` of a render now (``memory``: a
        :class:`zero123.utils.memory.MemoryPlan`; None: whole renders), with the guidance of ``guidance_images``
        renders to come."""
        if self.memory is None or self.memory.budget is None:
            return {}
        from ..utils.memory import resident_bytes

        model = getattr(self.guidance, "model", None)
        resident = resident_bytes(self.device, [model] if model is not None else [], [self.representation])
        whole, part = self.memory.limits(resident, guidance_images)
        return {"max_whole_samples": whole, "max_samples": part}

    @staticmethod
    def _weighted(terms: dict, lam: dict):
        """``sum(lam[name] * term)``, a name without a weight counting 0."""
        return sum(lam.get(k, 0.0) * v for k, v in terms.items())

    def train_step(self) -> dict:
        """One optimisation step; returns the weighted loss terms (floats)."""
        cfg, step, rep = self.cfg, self.step, self.representation
        sched = cfg.schedule_step(step)
        stage = cfg.stage(step)
        cc = cfg.cameras
        lam = cfg.losses.at(sched)
        rep.before_step(step, sched, self.dev_gen)
        need_normals = any(lam.get(k, 0.0) > 0 for k in rep.normal_terms)
        perturb = cfg.normal_perturb_std if any(lam.get(k, 0.0) > 0 for k in rep.perturbed_normal_terms) else 0.0
        logs = {}

        # random views: guidance + regularisers
        B, res = cc.batch_sizes[stage], cc.resolutions[stage]
        cams = sample_cameras(B, self.cpu_gen, cc.elevation_range, cc.azimuth_range, (cc.distance, cc.distance),
                              (cc.fovy, cc.fovy), cc.light_distance_range, cc.light_position_perturb)
        white = torch.rand(B, generator=self.cpu_gen) < cc.white_background_prob
        bg = torch.where(white[:, None], torch.ones(B, 3), torch.rand(B, 3, generator=self.cpu_gen))
        shading = self._shading(sched)
        ambient_ratio = cfg.material.ambient_ratio_min + (1 - cfg.material.ambient_ratio_min) * float(
            torch.rand(1, generator=self.cpu_gen))
        guidance = self.guidance

        def guided(rgb):
            return {guidance.loss_name: guidance(rgb, cams, sched, generator=self.dev_gen).loss}

        terms, stats = rep.render_backward(cams, res, lam, background=bg, with_sparsity=True, image_terms=guided,
                                           **self._limits(B), shading=shading,
                                           ambient_ratio=ambient_ratio, with_normals=need_normals,
                                           normal_perturb_std=perturb, generator=self.dev_gen)
        loss_z = self._weighted(terms, lam)
        logs.update({f"z/{k}": v for k, v in terms.items()})
        samples = stats.get("samples")

        # reference view: RGB + mask + regularisers
        rres = cc.reference_resolutions[stage]
        white1 = torch.ones(1, 3, device=self.device)
        terms_r, _ = rep.render_backward(self.reference_cameras(), rres, lam, background=white1, with_sparsity=False,
                                         targets=self._reference_targets(rres), **self._limits(0),
                                         shading="diffuse", ambient_ratio=1.0, with_normals=need_normals,
                                         normal_perturb_std=perturb, generator=self.dev_gen)
        loss_r = self._weighted(terms_r, lam)
        logs.update({f"ref/{k}": v for k, v in terms_r.items()})
        rep.after_backward(step, sched, self.optimizer)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        rep.after_step(step, sched, self.optimizer)
        self.step += 1
        logs["loss"] = (loss_z + loss_r).detach()
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device).reshape(())
                              for v in logs.values()]).tolist()     # one device->host copy per step
        self.last_losses = dict(zip(logs.keys(), values))
        if samples is not None:
            self.last_losses["samples"] = samples
        return self.last_losses


__all__ = ["ImageTo3DTrainer", "load_checkpoint", "checkpoint_path", "CHECKPOINT_NAME", "CHECKPOINT_VERSION"]
