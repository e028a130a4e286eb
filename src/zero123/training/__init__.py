"""Training and fine-tuning of Zero123-family models (and of a small VAE) with ``accelerate``.

    from zero123.training import load_config, Trainer
    Trainer(load_config("configs/small_default.yaml", ["data.root=renders/"])).train(resume="latest")

Heavy imports (diffusers, accelerate) happen when a trainer is built, not on ``import zero123.training``.
"""

from .config import TrainConfig, config_from_dict, load_config

__all__ = ["TrainConfig", "load_config", "config_from_dict", "Trainer", "TrainResult", "train", "ViewPairDataset",
           "write_synthetic_dataset"]


def __getattr__(name):
    if name in ("Trainer", "TrainResult", "train"):
        from . import trainer

        return getattr(trainer, name)
    if name == "ViewPairDataset":
        from .dataset import ViewPairDataset

        return ViewPairDataset
    if name == "write_synthetic_dataset":
        from .synthetic import write_synthetic_dataset

        return write_synthetic_dataset
    raise AttributeError(f"module 'zero123.training' has no attribute {name!r}")
