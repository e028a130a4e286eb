"""Checkpoints and resume of a training run: ``OUTPUT/checkpoints/step_XXXXXXXX/`` holds ``accelerate``'s state
(optimizer, RNG, ...), the weights as ``model_0.safetensors`` (no pickles; without DDP's / compile's prefixes),
the EMA shadow weights (``ema.safetensors``) and ``trainer_state.json`` (step, draws, stage, seed, and the frozen
VAE's fingerprint). A checkpoint folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from ..errors import Zero123Error
from ..utils.atomic import replace_folder

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"
EMA_NAME = "ema.safetensors"
MODEL_STATE_NAME = "model_{}.safetensors"


def find_checkpoint(output_dir, which: str = "latest") -> Path | None:
    """``latest``: the newest complete checkpoint under ``OUTPUT/checkpoints`` (None if there is none); otherwise
    ``which`` is a checkpoint folder (error if it is not one)."""
    if which != "latest":
        path = Path(which)
        if not (path / STATE_NAME).is_file():
            raise Zero123Error(f"--resume {which}: not a training checkpoint (no {STATE_NAME})")
        return path
    ck = Path(output_dir) / CHECKPOINTS_DIR
    done = sorted(p for p in ck.glob("step_*") if (p / STATE_NAME).is_file()) if ck.is_dir() else []
    return done[-1] if done else None



def vae_fingerprint(vae) -> str:
    """sha256 (hex) of an ``AutoencoderKL``'s weights and ``scaling_factor``: what a diffusion run's latents depend
    on. A checkpoint records it so that a resume on another VAE is refused instead of silently training the UNet
    (and, with ``data.cache_latents``, reading cached latents) of one VAE with another."""
    import hashlib

    h = hashlib.sha256(repr(float(vae.config.scaling_factor)).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class CheckpointMixin:
    """``save_checkpoint`` / ``load_checkpoint`` of a ``Trainer`` (reads its ``accelerator``, ``config``, ``out``,
    ``ema``, ``named_trainable``, ``trainable``, ``global_batch``, ``_vae_sha256``; ``register_checkpoint_hooks``
    after ``accelerator.prepare``)."""

    def register_checkpoint_hooks(self) -> None:
        self.accelerator.register_save_state_pre_hook(self._save_models_hook)
        self.accelerator.register_load_state_pre_hook(self._load_models_hook)

    def _save_models_hook(self, models, weights, output_dir):
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            for i, m in enumerate(models):
                sd = self.accelerator.unwrap_model(m, keep_torch_compile=False).state_dict()
                save_file({k: v.detach().contiguous() for k, v in sd.items()},
                          os.path.join(output_dir, MODEL_STATE_NAME.format(i)))
        weights.clear()  # the weights are written above, without DDP's "module." / compile's "_orig_mod." prefixes

    def _load_device(self) -> str:
        """This process's device as safetensors names it: "cuda:1", but "cpu" (a multi-process CPU run's
        accelerator device is "cpu:0", which safetensors rejects)."""
        d = self.accelerator.device
        return "cpu" if d.type == "cpu" else str(d)

    def _load_models_hook(self, models, input_dir):
        from safetensors.torch import load_file

        while models:
            i = len(models) - 1
            m = models.pop()
            path = os.path.join(input_dir, MODEL_STATE_NAME.format(i))
            if not os.path.isfile(path):
                raise Zero123Error(f"checkpoint {input_dir}: missing {MODEL_STATE_NAME.format(i)}")
            sd = load_file(path, device=self._load_device())
            try:
                self.accelerator.unwrap_model(m, keep_torch_compile=False).load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise Zero123Error(f"checkpoint {input_dir} does not match this model "
                                   f"({str(exc).splitlines()[0]})") from None

    def save_checkpoint(self, step: int, draws: int) -> Path:
        """Write ``OUTPUT/checkpoints/step_XXXXXXXX`` (weights, optimizer, EMA, step/draw counters) atomically."""
        from safetensors.torch import save_file

        acc, cfg = self.accelerator, self.config
        root = self.out / CHECKPOINTS_DIR
        final = root / f"step_{step:08d}"
        tmp = root / f".step_{step:08d}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()  # every process has written its part before the folder is renamed
        if acc.is_main_process:
            if self.ema is not None:
                save_file({n: s.detach().contiguous() for (n, _), s in zip(self.named_trainable,
                                                                           self.ema.shadow_params)},
                          str(tmp / EMA_NAME))
            state = {"step": step, "draws": draws, "stage": cfg.stage, "seed": cfg.seed,
                     "global_batch": self.global_batch, "num_processes": acc.num_processes,
                     "ema_optimization_step": None if self.ema is None else self.ema.optimization_step,
                     "time": time.time()}
            if self._vae_sha256 is not None:
                state["vae_sha256"] = self._vae_sha256
            (tmp / STATE_NAME).write_text(json.dumps(state, indent=1))
            replace_folder(tmp, final)
            if cfg.checkpoints_total_limit:
                done = sorted(p for p in root.glob("step_*") if (p / STATE_NAME).is_file())
                for old in done[: max(0, len(done) - cfg.checkpoints_total_limit)]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path) -> tuple[int, int]:
        """Restore a checkpoint written by ``save_checkpoint``; returns ``(step, draws)``."""
        from safetensors.torch import load_file

        path = Path(path)
        state = json.loads((path / STATE_NAME).read_text())
        if state.get("stage") != self.config.stage:
            raise Zero123Error(f"checkpoint {path} is from a stage {state.get('stage')!r} run, this run is "
                               f"stage {self.config.stage!r}")
        if None not in (self._vae_sha256, state.get("vae_sha256")) and state["vae_sha256"] != self._vae_sha256:
            raise Zero123Error(f"checkpoint {path} was trained on another VAE than this run's (model.vae_from / "
                               "model.init_from): its latents differ; resume with the VAE it was trained on")
        self.accelerator.load_state(str(path))
        if self.ema is not None:
            ema_path = path / EMA_NAME
            if ema_path.is_file():
                shadow = load_file(str(ema_path), device=self._load_device())
                with torch.no_grad():
                    for (n, _), s in zip(self.named_trainable, self.ema.shadow_params):
                        s.copy_(shadow[n])
                self.ema.optimization_step = int(state.get("ema_optimization_step") or state["step"])
            else:  # checkpoint written without EMA: start the average from the restored weights
                self.ema = type(self.ema)(self.trainable, decay=self.config.ema.decay,
                                          update_after_step=self.config.ema.update_after_step)
        if state.get("seed") != self.config.seed:
            self._print(f"warning: checkpoint seed {state.get('seed')} != config seed {self.config.seed}: "
                        "the data order and noise continue with the new seed")
        return int(state["step"]), int(state["draws"])
