"""Training and fine-tuning of Zero123-family models with ``accelerate`` (CPU, one GPU, several GPUs / nodes).

The diffusion objective is Zero123's (``ldm.models.diffusion.ddpm.LatentDiffusion`` with hybrid conditioning):

* target latents ``z0 = VAE posterior sample(target) x scaling_factor``; concat latent = posterior MODE of the input
  view (unscaled); CLIP image embedding of the input view; frozen VAE and CLIP (encoded without gradients);
* ``t ~ U{0..999}``, ``eps ~ N(0, I)``, ``z_t = sqrt(acp[t]) z0 + sqrt(1 - acp[t]) eps``;
* classifier-free-guidance dropout per sample with ``u ~ U(0,1)`` and ``p = 0.05``: ``u < 2p`` replaces the CLIP
  embedding by zeros BEFORE the camera projection (T is still appended), ``p <= u < 3p`` zeroes the concat latent;
* loss = mean squared error between the UNet's eps and ``eps`` (optionally Min-SNR-weighted per sample,
  ``objective.snr_gamma``; not in Zero123);
* AdamW (lr 1e-4, ``cc_projection`` at 10x), linear warm-up from 1e-6 x lr over 100 steps then constant, EMA.

Reproducibility: all randomness of a sample (view pair, ``t``, ``u``, ``eps``, the posterior noise) is a function of
``(seed, draw number)`` (see ``zero123.training.dataset``), so a resumed run continues exactly as an uninterrupted
one, and the same global batch gives the same data and noise on 1 or N processes.

``stage: vae`` trains an ``AutoencoderKL`` alone (mean L1 + ``kl_weight`` x KL, LDM's weighting) with the same
machinery, so a small model can get its own VAE before its UNet (``model.vae_from`` then points at the export).

The pieces live beside this module: ``objectives`` (the losses, the noise draws, the lr multipliers), ``build``
(the models a run starts from), ``stages`` (``DiffusionStage`` / ``VAEStage``: what differs between the two
stages), ``checkpointing`` (checkpoints and resume); this module holds the loop. Their public names stay importable
from here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import Zero123Error
from .build import (build_model, build_vae, checkpoint_ema_unet, load_clip_folder, load_vae_folder,  # noqa: F401
                    sizes_config, start_ema_from_checkpoint)
from .checkpointing import (CHECKPOINTS_DIR, EMA_NAME, MODEL_STATE_NAME, STATE_NAME,  # noqa: F401
                            CheckpointMixin, find_checkpoint, vae_fingerprint)
from .config import TrainConfig, save_config
from .dataset import DrawSampler, DrawStream, ViewPairDataset
from .objectives import (DiffusionObjective, PairCollate, VAEObjective, apply_cfg_dropout,  # noqa: F401
                         cfg_dropout_masks, decay_factor, draw_noise, min_snr_weights, vae_reconstruction_loss,
                         warmup_factor)
from .stages import STAGES, export_model, export_vae, sample_views, save_image_grid  # noqa: F401

#: this module's loop and, re-exported, the public names of the modules it was split into
__all__ = ["Trainer", "TrainResult", "train", "make_accelerator", "find_checkpoint", "vae_fingerprint",
           "sizes_config", "build_model", "build_vae", "load_vae_folder", "load_clip_folder", "checkpoint_ema_unet",
           "start_ema_from_checkpoint", "DiffusionObjective", "VAEObjective", "PairCollate", "apply_cfg_dropout",
           "cfg_dropout_masks", "decay_factor", "draw_noise", "min_snr_weights", "vae_reconstruction_loss",
           "warmup_factor", "export_model", "export_vae", "sample_views", "save_image_grid"]

LOG_NAME = "log.jsonl"
FINAL_DIR = "final"
SAMPLES_DIR = "samples"


@dataclass
class TrainResult:
    """What a run produced: the last optimizer step, its loss, and the files."""

    step: int
    loss: float | None
    output_dir: Path
    log_path: Path
    checkpoint: Path | None
    export_dir: Path | None


def make_accelerator(config: TrainConfig):
    """The ``Accelerator`` of a run (mixed precision from the config, else from ``accelerate launch``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    kwargs = dict(gradient_accumulation_steps=config.gradient_accumulation_steps,
                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)])
    if config.mixed_precision is not None:
        kwargs["mixed_precision"] = config.mixed_precision
    if config.compile:
        kwargs["dynamo_backend"] = "inductor"
    return Accelerator(**kwargs)


class Trainer(CheckpointMixin):
    """One training run (``config.stage`` = ``diffusion`` or ``vae``).

    ``Trainer(config).train(resume=None | "latest" | PATH)`` -> ``TrainResult``. Writes under ``output_dir``:
    ``config.yaml``, ``log.jsonl`` (one JSON line per ``log_every`` steps: step, loss, lr, samples/s, ...),
    ``checkpoints/step_XXXXXXXX/`` (every ``checkpoint_every`` steps and at the end), ``samples/step_XXXXXXXX.png``
    and ``final/`` (the EMA weights: a diffusers-format Zero123 folder, or an ``AutoencoderKL`` folder for the
    VAE stage). Create one ``Trainer`` per process (run under ``accelerate launch`` for several).
    """

    def __init__(self, config: TrainConfig, accelerator=None):
        self.config = config.validate()
        self.accelerator = accelerator or make_accelerator(config)
        self.out = Path(config.output_dir)
        self._setup_done = False
        self._vae_sha256 = None  # diffusion stage with a frozen VAE: vae_fingerprint of it (setup)
        self.stage = STAGES[self.config.stage](self.config)

    # ----- setup -------------------------------------------------------------------------------------------
    def _frozen_dtype(self) -> torch.dtype:
        mp = self.accelerator.mixed_precision
        if self.config.model.frozen_dtype == "fp32" or mp == "no":
            return torch.float32
        return torch.float16 if mp == "fp16" else torch.bfloat16

    def setup(self) -> None:
        """Build the model, data, optimizer and EMA; ``accelerate``-prepare them. Called by ``train``."""
        if self._setup_done:
            return
        from accelerate.utils import set_seed

        cfg, acc = self.config, self.accelerator
        set_seed(cfg.seed)  # same initial weights on every process
        if acc.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its fastest kernels
        from ..data.layout import read_manifest

        manifest_size = read_manifest(cfg.data.root).image_size
        size_hint = cfg.model.image_size or cfg.data.image_size or manifest_size
        built = self.stage.build(acc.device, size_hint, self._frozen_dtype())
        self.model, self.image_size, self.latent_shape = built.model, built.image_size, built.latent_shape
        self._vae_sha256 = built.vae_sha256
        objective, groups = built.objective, built.groups
        if cfg.data.image_size is not None and cfg.data.image_size != self.image_size:
            raise Zero123Error(f"data.image_size {cfg.data.image_size} differs from the model's image size "
                               f"{self.image_size}")
        for g in groups:
            g["base_lr"] = g["lr"]
        objective.to(acc.device)
        self.named_trainable = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
        self.trainable = [p for _, p in self.named_trainable]
        optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay,
                                      eps=cfg.optim.eps)
        self.ema = None
        if cfg.ema.enabled:
            from diffusers.training_utils import EMAModel

            # foreach: a few multi-tensor kernels per step instead of ~7 small ones per parameter
            self.ema = EMAModel(self.trainable, decay=cfg.ema.decay, update_after_step=cfg.ema.update_after_step,
                                foreach=True)
            self.stage.start_ema(self.ema, self.named_trainable)
        self.objective, self.optimizer = acc.prepare(objective, optimizer)
        self.register_checkpoint_hooks()

        data_kw = dict(image_size=self.image_size, **self.stage.data_kwargs(self.model))
        cached = self.stage.uses_latent_cache
        self.train_set = ViewPairDataset(cfg.data.root, cfg.data.split, seed=cfg.seed,
                                         max_objects=cfg.data.max_objects, same_view_prob=cfg.data.same_view_prob,
                                         with_target=not cached, **data_kw)
        if len(self.train_set) == 0:
            raise Zero123Error(f"dataset {cfg.data.root}: split {cfg.data.split!r} has no objects")
        self.latent_cache = None
        if cached:  # the frozen VAE's posteriors of every training view, encoded once (zero123.training.latent_cache)
            from .latent_cache import LatentCache

            t0 = time.perf_counter()
            if cfg.data.latent_cache_file:
                self.latent_cache = LatentCache.load(cfg.data.latent_cache_file, acc.device)
                self.latent_cache.check_matches(self.train_set, self._vae_sha256, cfg.data.latent_cache_file)
            else:
                self.latent_cache = LatentCache.build(self.model.vae, self.train_set, acc.device,
                                                      batch_size=max(cfg.batch_size, 64),
                                                      num_workers=cfg.data.num_workers, autocast=acc.autocast,
                                                      progress=acc.is_main_process)
            self._print(f"latent cache: {len(self.latent_cache)} views "
                        f"{'read' if cfg.data.latent_cache_file else 'encoded'} in {time.perf_counter() - t0:.1f} s")
        self.val_set = ViewPairDataset(cfg.data.root, cfg.data.val_split, seed=cfg.seed + 1, **data_kw)
        if len(self.val_set) == 0:
            self.val_set = ViewPairDataset(cfg.data.root, cfg.data.split, seed=cfg.seed + 1,
                                           max_objects=cfg.data.max_objects, **data_kw)
        self.collate = PairCollate(cfg.seed, self.latent_shape)
        self.val_collate = PairCollate(cfg.seed + 1, self.latent_shape)
        self.global_batch = cfg.batch_size * acc.num_processes * cfg.gradient_accumulation_steps
        self._setup_done = True


    # ----- helpers -----------------------------------------------------------------------------------------
    def _print(self, msg: str) -> None:
        if self.accelerator.is_main_process:
            from tqdm.auto import tqdm

            tqdm.write(msg)

    def _to_device(self, batch: dict) -> dict:
        """The batch on the training device; a batch without target images (the training loader's under
        ``data.cache_latents``) gets the cached posteriors ``target_mean``, ``target_std``, ``cond_mean``."""
        dev = self.accelerator.device
        out = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        if "target" not in batch:  # (a VAE-stage batch always has them)
            if self.latent_cache is None:
                raise Zero123Error("a training batch without target images needs data.cache_latents")
            out["target_mean"], out["target_std"] = self.latent_cache.lookup(batch["object_index"],
                                                                             batch["target_view"])
            out["cond_mean"], _ = self.latent_cache.lookup(batch["object_index"], batch["cond_view"])
        return out

    def _inputs(self, batch: dict) -> dict:
        return self.stage.inputs(batch)

    def _set_lr(self, step: int) -> float:
        o = self.config.optim
        f = warmup_factor(step, o.warmup_steps, o.warmup_start_factor) * decay_factor(
            step, o.warmup_steps, self.config.max_steps, o.decay, o.final_lr_factor)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        return self.optimizer.param_groups[0]["lr"]

    def _loader(self, dataset, collate, sampler, workers: int):
        return torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler,
                                           collate_fn=collate, num_workers=workers,
                                           pin_memory=self.accelerator.device.type == "cuda",
                                           persistent_workers=False)

    def _fixed_batch(self, dataset, collate, draws: list) -> dict:
        stream = DrawStream(len(dataset), dataset.seed)
        return collate([dataset[(d, stream.item(d))] for d in draws])

    def micro_step(self, batch: dict, step: int) -> tuple[torch.Tensor, bool]:
        """Forward/backward of one micro-batch (on the device); at the last micro-batch of an optimizer step also
        the warm-up lr for ``step`` (optimizer steps done so far), gradient clipping, the optimizer step and the
        EMA update. Returns ``(loss, stepped)``, the loss detached (float32)."""
        acc, cfg = self.accelerator, self.config
        with acc.accumulate(self.objective):
            out = self.objective(**self._inputs(batch))
            acc.backward(out["loss"])
            if acc.sync_gradients:
                self._set_lr(step)
                if cfg.optim.max_grad_norm:
                    acc.clip_grad_norm_(self.trainable, cfg.optim.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        stepped = acc.sync_gradients
        if stepped and self.ema is not None:
            self.ema.step(self.trainable)
        return out["loss"].detach().float(), stepped

    # ----- evaluation --------------------------------------------------------------------------------------
    def evaluate_loss(self, num_draws: int | None = None, dataset=None, collate=None,
                      cfg_dropout: bool = False) -> float:
        """Mean loss (what is optimised) over the fixed draws ``0 .. num_draws-1`` of ``dataset`` (default the
        val split), split across processes; without CFG dropout unless ``cfg_dropout``. Same value on every
        process."""
        return self.evaluate_losses(num_draws, dataset, collate, cfg_dropout)["loss"]

    @torch.no_grad()
    def evaluate_losses(self, num_draws: int | None = None, dataset=None, collate=None,
                        cfg_dropout: bool = False) -> dict:
        """``evaluate_loss`` for every scalar the objective returns (one pass): ``{"loss", ...}``; for the
        diffusion stage also ``diffusion_loss``, the plain eps MSE (equal to ``loss`` unless Min-SNR-weighted)."""
        self.setup()
        acc, cfg = self.accelerator, self.config
        dataset = dataset or self.val_set
        collate = collate or self.val_collate
        n = int(num_draws or cfg.val_draws)
        stream = DrawStream(len(dataset), dataset.seed)
        mine = list(range(acc.process_index, n, acc.num_processes))
        module = acc.unwrap_model(self.objective, keep_torch_compile=False)  # eager: no recompile per batch size
        keys = list(self.stage.loss_keys)
        total = torch.zeros(len(keys) + 1, device=acc.device, dtype=torch.float64)  # sums, then the count
        for i in range(0, len(mine), cfg.batch_size):
            chunk = mine[i:i + cfg.batch_size]
            batch = self._to_device(collate([dataset[(d, stream.item(d))] for d in chunk]))
            if not cfg_dropout:
                batch["dropout_u"] = torch.ones_like(batch["dropout_u"])
            with acc.autocast():
                out = module(**self._inputs(batch))
            total += torch.stack([out[k].double() * len(chunk) for k in keys]
                                 + [torch.tensor(float(len(chunk)), device=acc.device, dtype=torch.float64)])
        total = acc.reduce(total, reduction="sum")
        return {k: float(total[j] / total[-1].clamp(min=1)) for j, k in enumerate(keys)}

    @torch.no_grad()
    def save_samples(self, step: int) -> Path | None:
        """Main process: ``samples/step_XXXXXXXX.png``; diffusion rows (input, ground truth, sample), VAE rows
        (image, reconstruction). Uses the EMA weights when ``sample.use_ema``."""
        acc, sc = self.accelerator, self.config.sample
        if not acc.is_main_process:
            return None
        dataset = self.val_set
        batch = self._to_device(self._fixed_batch(dataset, self.val_collate, list(range(sc.num_pairs))))
        use_ema = self.ema is not None and sc.use_ema
        if use_ema:
            self.ema.store(self.trainable)
            self.ema.copy_to(self.trainable)
        try:
            with acc.autocast():
                rows = self.stage.sample_rows(self.model, batch)
        finally:
            if use_ema:
                self.ema.restore(self.trainable)
        return save_image_grid(rows, self.out / SAMPLES_DIR / f"step_{step:08d}.png")

    # ----- export ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def latent_std(self, num_draws: int = 64) -> float:
        """Std of VAE posterior samples over training images (the scaling factor is its inverse)."""
        vals = []
        batch_size = self.config.batch_size
        for start in range(0, num_draws, batch_size):
            draws = list(range(start, min(num_draws, start + batch_size)))
            batch = self._to_device(self._fixed_batch(self.train_set, self.collate, draws))
            dist = self.model.encode(batch["target"].to(self.model.dtype)).latent_dist
            vals.append((dist.mean + dist.std * batch["posterior_noise"]).float().flatten())
        return float(torch.cat(vals).std())

    def export(self, folder=None) -> Path | None:
        """Main process: the EMA (else current) weights to ``folder`` (default ``OUTPUT/final``)."""
        acc = self.accelerator
        folder = Path(folder or self.out / FINAL_DIR)
        if not acc.is_main_process:
            return None
        if self.ema is not None:
            self.ema.store(self.trainable)
            self.ema.copy_to(self.trainable)
        try:
            return self.stage.export(self, folder)
        finally:
            if self.ema is not None:
                self.ema.restore(self.trainable)

    # ----- the loop ----------------------------------------------------------------------------------------
    def _rewrite_log(self, keep_until_step: int | None) -> None:
        """Fresh run: empty the log. Resume: drop the lines after the resumed step (they will be redone)."""
        log = self.out / LOG_NAME
        lines = []
        if keep_until_step is not None and log.is_file():
            for line in log.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= keep_until_step:
                        lines.append(line)
                except json.JSONDecodeError:
                    continue
        from ..utils.atomic import atomic_write_text

        atomic_write_text(log, "".join(line + "\n" for line in lines))

    def _out_of_time(self, t_start: float) -> bool:
        """Whether ``max_minutes`` has run out on any process (a reduction, so all processes stop together)."""
        if self.config.max_minutes is None:
            return False
        flag = torch.tensor(float(time.perf_counter() - t_start > 60.0 * self.config.max_minutes),
                            device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum") > 0)

    def train(self, resume: str | None = None, max_steps: int | None = None) -> TrainResult:
        """Run until ``max_steps`` (default ``config.max_steps``) optimizer steps. ``resume``: ``"latest"`` (the
        newest checkpoint of ``output_dir``, or a fresh start when there is none) or a checkpoint folder."""
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        max_steps = int(max_steps or cfg.max_steps)  # where to stop; an lr decay still ends at cfg.max_steps
        ckpt = find_checkpoint(self.out, resume) if resume else None
        if ckpt is None and find_checkpoint(self.out, "latest") is not None:
            raise Zero123Error(f"{self.out} already holds checkpoints of a run: pass --resume latest to continue "
                               "it, or choose another --output-dir")
        self.setup()
        acc.wait_for_everyone()
        step, draws = self.load_checkpoint(ckpt) if ckpt is not None else (0, 0)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
            self._rewrite_log(step if ckpt is not None else None)
            if ckpt is not None:
                self._print(f"resumed from {ckpt} at step {step}")
        acc.wait_for_everyone()

        accum = cfg.gradient_accumulation_steps
        remaining = max(0, max_steps - step)
        sampler = DrawSampler(DrawStream(len(self.train_set), cfg.seed), cfg.batch_size, start_draw=draws,
                              num_processes=acc.num_processes, process_index=acc.process_index,
                              num_micro_steps=remaining * accum)
        loader = self._loader(self.train_set, self.collate, sampler, cfg.data.num_workers)
        bar = tqdm(total=max_steps, initial=step, desc=f"train ({cfg.stage})", unit="step",
                   disable=not acc.is_main_process, dynamic_ncols=True)
        window: list[torch.Tensor] = []
        micro_losses: list[torch.Tensor] = []
        t_window = t_start = time.perf_counter()
        paused = 0.0
        last_loss, last_ckpt = None, ckpt
        lr = self._set_lr(step)
        out_of_time = False
        self.objective.train()
        for batch in loader:
            loss, stepped = self.micro_step(self._to_device(batch), step)
            micro_losses.append(loss)
            if not stepped:
                continue
            lr = self.optimizer.param_groups[0]["lr"]
            step += 1
            draws += self.global_batch
            window.append(torch.stack(micro_losses).mean())
            micro_losses = []
            bar.update(1)
            if step % cfg.log_every == 0 or step == max_steps:
                losses = acc.reduce(torch.stack(window), reduction="mean")  # [k] per-step global losses
                if not bool(torch.isfinite(losses).all()):
                    raise Zero123Error(f"the training loss is not finite at step {step}: lower optim.lr, set "
                                       "optim.max_grad_norm, or use bf16 instead of fp16")
                elapsed = time.perf_counter() - t_window - paused
                record = {"step": step, "loss": float(losses.mean()), "loss_last": float(losses[-1]), "lr": lr,
                          "draws": draws, "epoch": draws / len(self.train_set),
                          "samples_per_s": len(window) * self.global_batch / max(elapsed, 1e-9),
                          "elapsed_s": time.perf_counter() - t_start, "num_processes": acc.num_processes,
                          "global_batch": self.global_batch}
                if acc.device.type == "cuda":
                    record["max_memory_gib"] = torch.cuda.max_memory_allocated(acc.device) / 2**30
                last_loss = record["loss_last"]
                if acc.is_main_process:
                    with open(self.out / LOG_NAME, "a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                window, t_window, paused = [], time.perf_counter(), 0.0
                out_of_time = self._out_of_time(t_start)
            t_pause = time.perf_counter()  # validation, samples and checkpoints do not count as training time
            if cfg.val_every and step % cfg.val_every == 0:
                val = self.evaluate_losses()
                record = {"step": step, "val_loss": val["loss"]}
                if val.get("diffusion_loss", val["loss"]) != val["loss"]:  # weighted or + VAE loss: also the plain MSE
                    record["val_mse"] = val["diffusion_loss"]
                if acc.is_main_process:
                    with open(self.out / LOG_NAME, "a") as f:
                        f.write(json.dumps(record) + "\n")
            if cfg.sample.every and step % cfg.sample.every == 0:
                self.save_samples(step)
                acc.wait_for_everyone()
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == max_steps or out_of_time:
                last_ckpt = self.save_checkpoint(step, draws)
            paused += time.perf_counter() - t_pause
            if out_of_time:
                self._print(f"stopping at step {step}: max_minutes={cfg.max_minutes} reached "
                            "(continue with --resume latest)")
                break
        bar.close()
        export_dir = None
        if cfg.export:
            export_dir = self.export()
            acc.wait_for_everyone()
        return TrainResult(step=step, loss=last_loss, output_dir=self.out, log_path=self.out / LOG_NAME,
                           checkpoint=last_ckpt, export_dir=export_dir)


def train(config: TrainConfig, resume: str | None = None, max_steps: int | None = None) -> TrainResult:
    """``Trainer(config).train(resume, max_steps)``."""
    return Trainer(config).train(resume=resume, max_steps=max_steps)
