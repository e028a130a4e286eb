"""Training configuration: plain dataclasses, loaded from a YAML or JSON file plus ``key=value`` overrides.

A config file is a mapping whose top-level keys are the fields of ``TrainConfig``; nested sections (``data``,
``model``, ``optim``, ``ema``, ``objective``, ``sample``) are mappings of their dataclass fields. Unknown keys are
errors (they are usually typos). Relative paths are taken relative to the current working directory.

Batch sizes: ``batch_size`` is the micro-batch **per process** (per GPU). One optimizer step sees the *global
batch* ``batch_size x num_processes x gradient_accumulation_steps`` pairs; ``max_steps`` counts optimizer steps.
Zero123 itself trained with a global batch of 192 at lr 1e-4 (``cc_projection`` at 10x), 100 warm-up steps, EMA.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Zero123Error
from ..utils.dataclass_config import apply_overrides, build_dataclass, read_config_file

STAGES = ("diffusion", "vae")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class DataConfig:
    """Where the multi-view renders are (``zero123.training.dataset`` describes the layout)."""

    root: str = ""
    #: manifest split used for training; ``val_split`` feeds validation loss and sample grids (falls back to
    #: ``split`` when it has no objects).
    split: str = "train"
    val_split: str = "val"
    #: images are resized to the model's image size; set this only to check the renders already have that size.
    image_size: int | None = None
    num_workers: int = 2
    #: only use the first N objects of the split (after manifest order); null = all.
    max_objects: int | None = None
    #: probability that a training pair uses the same view as input and target (camera change 0). Zero123 always
    #: draws two distinct views (0, the default). A small share helps a model trained FROM SCRATCH discover its
    #: pixel-aligned input (the concat latent), which it otherwise learns to ignore; not used for validation.
    same_view_prob: float = 0.0
    #: diffusion stage with a frozen VAE: encode every training view once at start-up and look the posteriors up
    #: (``zero123.training.latent_cache``; same objective, no VAE pass per step; memory 2 x C h w per view).
    cache_latents: bool = False
    #: with ``cache_latents``: read the cache from this file (``zero123 cache-latents``, built once, possibly in
    #: shards on many GPUs) instead of encoding at start-up; refused for another VAE, image size or object list.
    latent_cache_file: str | None = None


@dataclass
class ModelConfig:
    """How the model is made.

    Either ``init_from`` (a checkpoint loaded with ``zero123.loading.load_model``: fine-tune a real Zero123 /
    Stable Zero123) or from scratch: ``preset`` (``tiny`` or ``full``, the sizes of ``zero123.models.configs``) or
    explicit sizes in ``unet`` / ``vae`` / ``clip``, which are keyword arguments of
    ``zero123.models.configs.sd_unet_config`` / ``sd_vae_config`` / ``openai_clip_vision_config`` (LDM-style names:
    ``model_channels``, ``channel_mult``, ...). Derived when left out: the UNet ``context_dim`` (= CLIP
    ``embed_dim``) and ``sample_size`` (= image size / VAE downsampling), the VAE ``resolution``.
    """

    init_from: str | None = None
    #: with ``init_from``: which of the checkpoint's weights training starts from. ``plain`` (the original zero123
    #: fine-tuning: ``model.diffusion_model.*``, or a folder's plain weight files) or ``ema`` (its EMA copy). Either
    #: way the checkpoint's EMA weights, when it has them, are where the EMA average (``ema.enabled``) starts.
    init_weights: str = "plain"
    #: with a single-file ``init_from``: its original LDM yaml (the sizes its tensors do not determine).
    original_config: str | None = None
    #: ``zero123`` | ``stable_zero123`` (how T is formed). null: the checkpoint's (``init_from``), else zero123.
    variant: str | None = None
    preset: str | None = None
    image_size: int | None = None
    unet: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    clip: dict = field(default_factory=dict)
    #: with ``init_from``: grow the loaded UNet before training, keeping its function (``zero123.models.growth``):
    #: ``{transformer_depth: 3}`` (transformer layers per attention block), ``{attention_levels: [0, 1, 2]}``.
    grow_unet: dict = field(default_factory=dict)
    #: a diffusers ``AutoencoderKL`` folder (e.g. the output of a ``stage: vae`` run) replacing the model's VAE.
    vae_from: str | None = None
    #: a transformers ``CLIPVisionModelWithProjection`` folder replacing the image encoder.
    clip_from: str | None = None
    #: true: the VAE is frozen (Zero123). false: the VAE keeps training on its reconstruction objective in the
    #: same steps (its own lr ``optim.vae_lr``); the diffusion loss never back-propagates into it.
    freeze_vae: bool = True
    #: ``stage: vae`` only: train the decoder (and ``post_quant_conv``) and keep the encoder frozen, so that the
    #: latent space, and every diffusion model trained on it, stays valid: a better decoder for an existing model.
    vae_decoder_only: bool = False
    #: false (Zero123): the CLIP image encoder is frozen. true: it trains with the UNet at ``optim.lr`` -- for
    #: models trained from scratch, where no pretrained CLIP exists and a frozen random one gives random features.
    train_image_encoder: bool = False
    gradient_checkpointing: bool = False
    #: frozen encoders run in the mixed-precision dtype (``auto``) or in fp32 (``fp32``).
    frozen_dtype: str = "auto"


#: the choices of ``ModelConfig.init_weights``
INIT_WEIGHTS = ("plain", "ema")
#: the keys of ``ModelConfig.grow_unet`` (keyword arguments of ``zero123.models.growth.grow_unet``)
GROW_UNET_KEYS = {"transformer_depth", "attention_levels"}

#: lr schedules after the warm-up (``OptimConfig.decay``; ``zero123.training.trainer.decay_factor``)
LR_DECAYS = ("constant", "cosine", "linear")


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up then constant lr (LDM's ``LambdaLinearScheduler`` as Zero123 configures it), or
    after the warm-up a decay to ``lr x final_lr_factor`` at ``max_steps`` (``decay``: cosine or linear)."""

    lr: float = 1e-4
    #: ``cc_projection`` learns at ``lr x projection_lr_scale`` (10 in Zero123).
    projection_lr_scale: float = 10.0
    #: lr of the VAE in a ``stage: vae`` run or when ``model.freeze_vae`` is false.
    vae_lr: float = 4.5e-6
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 100
    #: the lr factor at step 0 (LDM's ``f_start``); rises linearly to 1 at ``warmup_steps``.
    warmup_start_factor: float = 1e-6
    #: after the warm-up: ``constant`` (Zero123), or ``cosine`` / ``linear`` decay reaching ``final_lr_factor`` at the
    #: run's ``max_steps`` (keep ``max_steps`` the same when resuming: the schedule is a function of the step).
    decay: str = "constant"
    final_lr_factor: float = 0.0
    #: clip the global gradient norm (null: no clipping, as Zero123).
    max_grad_norm: float | None = None


@dataclass
class EMAConfig:
    """EMA of the trainable weights (diffusers ``EMAModel``; decay min(decay, (1+n)/(10+n)) as LDM's LitEma)."""

    enabled: bool = True
    decay: float = 0.9999
    update_after_step: int = 0


@dataclass
class ObjectiveConfig:
    #: Zero123's ``uncond``: u < 2p drops the CLIP embedding, p <= u < 3p drops the concat latent.
    cfg_dropout: float = 0.05
    #: VAE stage: loss = mean L1 + kl_weight x KL / (3 H W) (LDM's per-sample sums, 1e-6 as SD's VAE).
    kl_weight: float = 1e-6
    #: Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' ``--snr_gamma``): each sample's eps MSE is
    #: multiplied by ``min(SNR(t), gamma) / SNR(t)``, ``SNR = acp / (1 - acp)``, which lowers the weight of the
    #: low-noise steps (SNR > gamma) and so moves the gradient towards the high-noise steps that decide the
    #: silhouette. null: the plain mean (Zero123). 5 is the paper's value; smaller values weigh high noise more.
    snr_gamma: float | None = None


@dataclass
class SampleConfig:
    """Periodic sample grids (rows: input view, ground-truth target, sample)."""

    every: int = 500
    num_pairs: int = 4
    steps: int = 50
    guidance_scale: float = 3.0
    eta: float = 0.0
    #: use the EMA weights for the samples (what gets exported).
    use_ema: bool = True


@dataclass
class TrainConfig:
    stage: str = "diffusion"
    output_dir: str = "runs/zero123"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    #: ``no`` | ``fp16`` | ``bf16``; null: what ``accelerate launch --mixed_precision`` / ``accelerate config`` say.
    mixed_precision: str | None = None
    log_every: int = 10
    checkpoint_every: int = 500
    #: keep only the newest N checkpoints (null: keep all).
    checkpoints_total_limit: int | None = 3
    #: validation loss every N steps on ``val_draws`` fixed pairs of the val split (0: never).
    val_every: int = 0
    val_draws: int = 32
    #: export the (EMA) model to ``OUTPUT/final`` when training ends.
    export: bool = True
    #: wall-clock budget of one invocation in minutes (null: none). When it runs out the run stops at the next
    #: ``log_every`` boundary, saves a checkpoint and exports; ``--resume latest`` continues it (chunked runs).
    max_minutes: float | None = None
    #: pass ``find_unused_parameters`` to DDP (only needed for partially used models).
    find_unused_parameters: bool = False
    #: ``torch.compile`` the training objective (accelerate's ``dynamo_backend="inductor"``): fewer, fused kernels
    #: for overhead-bound small models; compiling takes minutes on the first steps (much longer on a CPU).
    compile: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d

    def validate(self) -> "TrainConfig":
        """Raise a one-line ``Zero123Error`` for the first inconsistent field; return self."""
        from ..camera import ConditioningVariant

        if self.stage not in STAGES:
            raise Zero123Error(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise Zero123Error(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                               f"got {self.mixed_precision!r}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every", "val_draws"):
            if int(getattr(self, name)) < 1:
                raise Zero123Error(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "val_every"):
            if int(getattr(self, name)) < 0:
                raise Zero123Error(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_minutes is not None and not float(self.max_minutes) > 0:
            raise Zero123Error(f"max_minutes must be > 0 or null, got {self.max_minutes}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise Zero123Error("checkpoints_total_limit must be >= 1 or null")
        if not self.data.root:
            raise Zero123Error("data.root is not set: give the dataset folder (with manifest.json)")
        if self.data.num_workers < 0:
            raise Zero123Error("data.num_workers must be >= 0")
        if self.model.variant is not None:
            ConditioningVariant.parse(self.model.variant)
        if self.model.init_weights not in INIT_WEIGHTS:
            raise Zero123Error(f"model.init_weights must be one of {', '.join(INIT_WEIGHTS)}, "
                               f"got {self.model.init_weights!r}")
        if self.model.init_from and (self.model.preset or self.model.unet):
            raise Zero123Error("model.init_from and model.preset/model.unet are exclusive: "
                               "fine-tune a checkpoint or build one from sizes, not both")
        if self.model.grow_unet:
            if not self.model.init_from:
                raise Zero123Error("model.grow_unet grows a loaded UNet: it needs model.init_from")
            unknown = set(self.model.grow_unet) - GROW_UNET_KEYS
            if unknown:
                raise Zero123Error(f"model.grow_unet: unknown key(s) {', '.join(sorted(unknown))} "
                                   f"(known: {', '.join(sorted(GROW_UNET_KEYS))})")
            depth = self.model.grow_unet.get("transformer_depth")
            if depth is not None and (not isinstance(depth, int) or depth < 1):
                raise Zero123Error(f"model.grow_unet.transformer_depth must be an integer >= 1, got {depth!r}")
            levels = self.model.grow_unet.get("attention_levels")
            if levels is not None and (not isinstance(levels, (list, tuple))
                                       or not all(isinstance(i, int) and i >= 0 for i in levels)):
                raise Zero123Error(f"model.grow_unet.attention_levels must be a list of level indices (0 = full "
                                   f"resolution), got {levels!r}")
        if self.model.preset and (self.model.unet or self.model.vae or self.model.clip):
            raise Zero123Error("model.preset and explicit model.unet/vae/clip sizes are exclusive")
        if self.model.frozen_dtype not in ("auto", "fp32"):
            raise Zero123Error(f"model.frozen_dtype must be 'auto' or 'fp32', got {self.model.frozen_dtype!r}")
        if self.data.cache_latents and (self.stage != "diffusion" or not self.model.freeze_vae):
            raise Zero123Error("data.cache_latents needs stage: diffusion with model.freeze_vae: true (a VAE "
                               "that learns changes its latents)")
        if self.data.latent_cache_file and not self.data.cache_latents:
            raise Zero123Error("data.latent_cache_file needs data.cache_latents: true")
        if self.model.vae_decoder_only and self.stage != "vae":
            raise Zero123Error("model.vae_decoder_only only applies to stage: vae")
        if self.optim.lr <= 0 or self.optim.vae_lr <= 0:
            raise Zero123Error("optim.lr and optim.vae_lr must be > 0")
        if self.optim.warmup_steps < 0:
            raise Zero123Error("optim.warmup_steps must be >= 0")
        if self.optim.decay not in LR_DECAYS:
            raise Zero123Error(f"optim.decay must be one of {', '.join(LR_DECAYS)}, got {self.optim.decay!r}")
        if not 0.0 <= self.optim.final_lr_factor <= 1.0:
            raise Zero123Error(f"optim.final_lr_factor must be in [0, 1], got {self.optim.final_lr_factor}")
        if len(tuple(self.optim.betas)) != 2:
            raise Zero123Error(f"optim.betas must be two numbers, got {self.optim.betas!r}")
        if not 0.0 <= self.objective.cfg_dropout <= 1.0 / 3.0:
            raise Zero123Error(f"objective.cfg_dropout must be in [0, 1/3], got {self.objective.cfg_dropout}")
        if self.objective.snr_gamma is not None and not self.objective.snr_gamma > 0:
            raise Zero123Error(f"objective.snr_gamma must be > 0 or null, got {self.objective.snr_gamma}")
        if not 0.0 < self.ema.decay <= 1.0:
            raise Zero123Error(f"ema.decay must be in (0, 1], got {self.ema.decay}")
        if self.sample.every < 0 or self.sample.num_pairs < 1 or self.sample.steps < 2:
            raise Zero123Error("sample.every must be >= 0, sample.num_pairs >= 1 and sample.steps >= 2")
        return self

    @property
    def global_batch_per_process(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps


# ---------------------------------------------------------------------------------------------------------------
# loading


def config_from_dict(data: dict, overrides: list[str] | tuple = ()) -> TrainConfig:
    """A validated ``TrainConfig`` from a mapping and dotted ``key=value`` overrides (values parsed as YAML)."""
    data = apply_overrides(data, overrides)
    if data.get("mixed_precision") is False:  # YAML 1.1 reads a bare `no` as false
        data["mixed_precision"] = "no"
    return build_dataclass(TrainConfig, data).validate()


def load_config(path, overrides: list[str] | tuple = ()) -> TrainConfig:
    """Read a YAML/JSON config file, apply ``key=value`` overrides, validate."""
    return config_from_dict(read_config_file(path), overrides)


def save_config(config: TrainConfig, path) -> None:
    """Write the resolved config as YAML (atomically)."""
    import yaml

    from ..utils.atomic import atomic_write_text

    path = atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
