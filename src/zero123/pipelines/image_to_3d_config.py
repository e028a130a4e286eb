"""Configuration of the image-to-3D pipeline as plain dataclasses, and its presets.

``default`` is threestudio's ``configs/stable-zero123.yaml`` (600 steps; random views 64/128/256 px in batches of
12/8/4 and the reference view at 128/256/512 px, switching at steps 200 and 300; 512 samples per ray; SDS weight
0.1 with the t schedule 0.7->0.3 / 0.98->0.8; Adam lr 0.01). ``fast`` keeps the recipe's losses and schedules but
runs 300 steps at lower resolution (random views 64/128 px, reference 128/256 px, 256 samples per ray) and exports
a lighter mesh and video. ``cpu`` fits a laptop-class CPU with the small bundled model (200 steps, random views
32/64 px in batches of 4/2, reference view 64 px, an 8-level hash grid, 64 samples per ray; about 1.1-1.4 s a step
on 2 cores). ``bundled`` is the GPU preset of the small bundled 128 px model (``fast``'s settings; a change for that
model goes in only with its ``zero123 eval-3d`` delta, ``bench/RESULTS.md``). ``tiny`` is for CPU tests with the tiny
random model (a handful of steps, 16 px). ``auto_preset(device, bundled)`` picks ``cpu`` on a CPU and, on a GPU,
``bundled`` for the bundled model and ``default`` for any other checkpoint (the one device-dependent rule).

Parts by key: ``representation`` (``nerf``: :mod:`zero123.representations`, with the NeRF-only sections
``field``, ``render``, ``occupancy``) and ``guidance`` (``zero123-sds``: :mod:`zero123.guidance`, section ``sds``).
The ``reference`` section owns the input view: its camera (``elevation``, ``azimuth``, ``distance``, ``fovy``) and
its preparation (``image_size``, ``recentre``); the guidance, the reference-view render and the export read it.

The presets are data: ``zero123/assets/presets/<name>.yaml``. ``default.yaml`` spells out every key (the
dataclass defaults below, which it must equal); the others list only the keys they change from it. They are
read by the typed builder shared with the training configs (:mod:`zero123.utils.dataclass_config`), as are a
user's ``zero123 to3d --config FILE`` and ``--set key=value`` overrides on top of a preset.

Schedules and resolution milestones are written in *recipe steps* (``schedule_steps``, 600): a run of ``steps``
steps evaluates them at the integer recipe step ``step * schedule_steps // steps``, so shorter runs follow the same
curves compressed, each value computed as threestudio computes it at that step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Optional, Sequence, Tuple

from ..errors import Zero123Error
from ..export.mesh import MeshExtractionConfig
from ..fields.nerf import FieldConfig
from ..guidance.losses import LossWeights
from ..guidance.sds import SDSConfig
from ..representations.gaussians.config import GaussianConfig
from ..rendering.volume import RenderSettings
from ..utils.dataclass_config import apply_overrides, build_dataclass, merge_config, read_config_file

PRESETS = ("default", "fast", "cpu", "tiny", "bundled")
#: representations with presets of their own (``presets/<representation>/`` for all but nerf)
REPRESENTATION_PRESETS = ("nerf", "gaussians")


@dataclass
class CameraConfig:
    """Random-view sampling and the resolution schedule (threestudio ``random_camera`` + ``data``)."""

    elevation_range: Tuple[float, float] = (-10.0, 80.0)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)
    distance: float = 3.8
    fovy: float = 20.0
    light_distance_range: Tuple[float, float] = (7.5, 10.0)
    light_position_perturb: float = 1.0
    resolutions: Tuple[int, ...] = (64, 128, 256)
    batch_sizes: Tuple[int, ...] = (12, 8, 4)
    reference_resolutions: Tuple[int, ...] = (128, 256, 512)
    milestones: Tuple[int, ...] = (200, 300)      # recipe steps at which the next stage starts
    white_background_prob: float = 0.5            # random views: white background, else a random colour


@dataclass
class ReferenceConfig:
    """The input view: the camera of the input photo (``elevation``, ``azimuth`` degrees, ``distance`` world units,
    ``fovy`` degrees; :mod:`zero123.camera` conventions) and how the photo is prepared (``image_size``: side of the
    prepared reference image in px; ``recentre``: segment and recentre it, False = an RGBA input already framed,
    used as is, threestudio's input). The guidance, the reference-view render and the export read the camera here."""

    elevation: float = 5.0
    azimuth: float = 0.0
    distance: float = 3.8
    fovy: float = 20.0
    image_size: int = 512
    recentre: bool = True


@dataclass
class MaterialConfig:
    """threestudio ``diffuse-with-point-light-material``: albedo-only ("ambient only") shading for the first
    ``ambient_only_steps``; afterwards albedo with prob 1 - diffuse_prob, else textureless with prob
    ``textureless_prob``, else diffuse. Random views draw ``ambient_ratio ~ U(ambient_ratio_min, 1)``."""

    ambient_only_steps: int = 100000
    diffuse_prob: float = 0.75
    textureless_prob: float = 0.05
    ambient_ratio_min: float = 0.1


@dataclass
class OptimizerConfig:
    lr: float = 0.01
    betas: Tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8


@dataclass
class OccupancyConfig:
    resolution: int = 32
    update_every: int = 16
    ema_decay: float = 0.95
    threshold: float = 0.01


@dataclass
class ExportConfig:
    """Mesh, texture and video export."""

    mesh: MeshExtractionConfig = dc_field(default_factory=MeshExtractionConfig)
    max_faces: int = 30000           # quadric decimation before UV unwrapping (0 = keep all)
    texture_size: int = 1024
    video_frames: int = 120
    video_size: int = 256
    video_fps: int = 30
    gif_frames: int = 40
    gif_size: int = 128
    preview_size: int = 256


@dataclass
class ImageTo3DConfig:
    """Everything one image-to-3D run needs (see module docstring)."""

    preset: str = "default"
    steps: int = 600
    schedule_steps: int = 600
    representation: str = "nerf"       # zero123.representations.REPRESENTATIONS key
    guidance: str = "zero123-sds"      # zero123.guidance.GUIDANCES key
    normal_perturb_std: float = 0.01
    checkpoint_every: int = 100
    reference: ReferenceConfig = dc_field(default_factory=ReferenceConfig)
    field: FieldConfig = dc_field(default_factory=FieldConfig)
    render: RenderSettings = dc_field(default_factory=RenderSettings)
    occupancy: OccupancyConfig = dc_field(default_factory=OccupancyConfig)
    cameras: CameraConfig = dc_field(default_factory=CameraConfig)
    material: MaterialConfig = dc_field(default_factory=MaterialConfig)
    sds: SDSConfig = dc_field(default_factory=SDSConfig)
    losses: LossWeights = dc_field(default_factory=LossWeights)
    optimizer: OptimizerConfig = dc_field(default_factory=OptimizerConfig)
    export: ExportConfig = dc_field(default_factory=ExportConfig)
    gaussians: GaussianConfig = dc_field(default_factory=GaussianConfig)   # representation: gaussians only

    # ----- helpers ----------------------------------------------------------------------------------------
    def schedule_step(self, step: int) -> int:
        """Recipe step of training step ``step``: ``step * schedule_steps // steps``, an integer like
        threestudio's ``global_step``, at or before the run's position on the recipe's curve (the step itself when
        ``steps == schedule_steps``). Every schedule (t range, loss weights, resolution milestones, shading) is
        evaluated at it, so a run of another length follows the recipe's curves compressed or stretched."""
        return (int(step) * self.schedule_steps) // max(1, self.steps)

    def stage(self, step: int) -> int:
        """Index of the resolution stage at training step ``step``."""
        s = self.schedule_step(step)
        return sum(1 for m in self.cameras.milestones if s >= m)

    def validate(self) -> "ImageTo3DConfig":
        c = self.cameras
        n = len(c.milestones) + 1
        if not (len(c.resolutions) == len(c.batch_sizes) == len(c.reference_resolutions) == n):
            raise Zero123Error(f"camera schedule needs {n} resolutions, batch sizes and reference resolutions "
                               f"for {len(c.milestones)} milestones")
        if self.steps < 1:
            raise Zero123Error(f"steps must be >= 1, got {self.steps}")
        if any(r < 4 for r in c.resolutions + c.reference_resolutions) or any(b < 1 for b in c.batch_sizes):
            raise Zero123Error("render resolutions must be >= 4 px and batch sizes >= 1")
        if self.checkpoint_every < 1:
            raise Zero123Error(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        from ..camera import check_elevation
        from ..guidance import GUIDANCES
        from ..representations import REPRESENTATIONS
        from ..utils.registry import lookup

        check_elevation(self.reference.elevation, "input elevation")
        if not (self.reference.distance > 0 and 0 < self.reference.fovy < 180):
            raise Zero123Error("reference.distance must be > 0 and reference.fovy in (0, 180) degrees")
        if self.reference.image_size < 4:
            raise Zero123Error(f"reference.image_size must be >= 4 px, got {self.reference.image_size}")
        lookup(REPRESENTATIONS, self.representation, "representation")
        lookup(GUIDANCES, self.guidance, "guidance")
        return self

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "ImageTo3DConfig":
        """The config of a mapping of its keys (any subset; a resumed run's saved ``to_dict()``), type-checked;
        an unknown key is a one-line error naming it."""
        return build_dataclass(cls, data)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def preset_data(name: str, representation: str = "nerf") -> dict:
    """The raw mapping of a preset: ``default.yaml`` (every key) updated by ``<name>.yaml`` (what it changes).
    ``representation="gaussians"``: ``default.yaml``, then ``gaussians/default.yaml`` (what DreamGaussian's
    schedule changes), then ``gaussians/<name>.yaml``."""
    from importlib.resources import files

    folder = Path(str(files("zero123") / "assets" / "presets"))
    layers = [folder / "default.yaml"]
    if representation == "gaussians":
        folder = folder / "gaussians"
        layers.append(folder / "default.yaml")
    if name != "default":
        layers.append(folder / f"{name}.yaml")
    data = read_config_file(layers[0])
    for layer in layers[1:]:
        data = merge_config(data, read_config_file(layer))
    return data


def auto_preset(device=None, bundled: bool = False) -> str:
    """``cpu`` on a CPU; on a GPU ``bundled`` when the model is the bundled 128 px one (``bundled=True``), else
    ``default`` (the recipe). ``device=None``: CUDA when available."""
    if device is None:
        import torch

        on_gpu = torch.cuda.is_available()
    else:
        on_gpu = str(device).startswith("cuda")
    if not on_gpu:
        return "cpu"
    return "bundled" if bundled else "default"


def preset_config(name: str = "default", steps: Optional[int] = None, device=None, config_file=None,
                  overrides: Sequence[str] = (), representation: Optional[str] = None,
                  bundled: bool = False) -> ImageTo3DConfig:
    """The named preset (``default``, ``fast``, ``cpu``, ``tiny``, ``bundled``:
    ``zero123/assets/presets/<name>.yaml``, or ``auto``: :func:`auto_preset` of ``device`` and ``bundled``, whether
    the model is the bundled one; the Gaussians have no ``bundled`` preset, so auto picks theirs as before), then,
    each on top of the one before: ``config_file`` (a YAML/JSON file of the same keys, any subset), dotted
    ``key=value`` ``overrides`` (values parsed as YAML, as ``zero123 train`` takes them) and ``steps``. Unknown keys
    and ill-typed values are one-line errors.
    ``representation``: ``nerf`` (None: the preset's own, nerf) or ``gaussians`` (the same preset names, from
    ``presets/gaussians/``: :func:`preset_data`)."""
    rep = "nerf" if representation is None else str(representation).strip().lower()
    if rep not in REPRESENTATION_PRESETS:
        raise Zero123Error(f"unknown representation {representation!r}: use one of "
                           f"{', '.join(REPRESENTATION_PRESETS)}")
    key = str(name).strip().lower()
    if key == "auto":
        key = auto_preset(device, bundled=bundled and rep == "nerf")
    if key not in PRESETS:
        raise Zero123Error(f"unknown preset {name!r}: use auto or one of {', '.join(PRESETS)}")
    if key == "bundled" and rep != "nerf":
        raise Zero123Error(f"preset bundled is for the NeRF representation; with {rep} use auto, default, fast, "
                           "cpu or tiny")
    data = preset_data(key, rep)
    if config_file is not None:
        data = merge_config(data, read_config_file(config_file))
        try:
            ImageTo3DConfig.from_dict(data)  # the file's own errors name the file
        except Zero123Error as exc:
            raise Zero123Error(f"{config_file}: {exc}") from None
    cfg = ImageTo3DConfig.from_dict(apply_overrides(data, overrides))
    if steps is not None:
        cfg.steps = int(steps)
    return cfg.validate()
