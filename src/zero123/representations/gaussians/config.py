"""The ``gaussians:`` section of an image-to-3D config: DreamGaussian's Gaussian-splatting settings as data.

Defaults are DreamGaussian's ``configs/image_sai.yaml`` (its Stable Zero123 recipe; ``configs/image.yaml``, the
Zero123-XL one, differs only in ``percent_dense: 0.1`` and ``densify_grad_threshold: 0.5``) and the constants of
its ``main.py`` / ``gs_renderer.py``:

* initialisation (``gs_renderer.Renderer.initialize``): ``num_pts: 5000`` centres uniform in the volume of a ball of
  radius 0.5, colours ~ grey (SH0 coefficients ``U(0, 1/255)``), opacity 0.1, isotropic scales = the RMS distance
  to the 3 nearest neighbours (``simple_knn.distCUDA2``), identity rotations; ``spatial_lr_scale: 10``;
* Adam (eps 1e-15), per-group learning rates: positions ``position_lr_init 0.001 -> position_lr_final 0.00002``
  (times ``spatial_lr_scale``; log-linear over ``position_lr_max_steps 500``, ``position_lr_delay_mult 0.02``,
  no delay steps), ``feature_lr 0.01``, ``opacity_lr 0.05``, ``scaling_lr 0.005``, ``rotation_lr 0.005``;
* densification (``main.py``): from ``density_start_iter 100`` to ``density_end_iter 3000`` every
  ``densification_interval 100`` steps with ``densify_grad_threshold 0.01`` (mean norm of the screen-space mean's
  gradient, NDC units), ``percent_dense 0.01`` of ``extent 0.5`` separating clone (small) from split (large),
  then prune ``opacity < min_opacity 0.01`` and world size ``> 0.1 * extent``; ``opacity_reset_interval 700``;
* mesh (``gs_renderer.GaussianModel.extract_mesh``): the opacity-weighted sum of the Gaussians on a ``128``^3 grid,
  Gaussians with opacity ``<= 0.005`` left out, iso-level ``density_thresh 1``.

Schedules here are in recipe steps (``ImageTo3DConfig.schedule_steps``), as every other schedule of to3d.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class GaussianConfig:
    """3D Gaussian representation settings (see the module docstring for the sources of the defaults)."""

    # initialisation
    num_points: int = 5000
    init_radius: float = 0.5            # world units: the ball the centres are drawn in
    init_opacity: float = 0.1
    init_color_max: float = 1.0 / 255.0  # SH0 coefficients ~ U(0, init_color_max): colours ~ 0.5 grey
    sh_degree: int = 0                  # only degree 0 (view-independent colour) is implemented
    # optimiser
    position_lr_init: float = 0.001
    position_lr_final: float = 0.00002
    position_lr_delay_mult: float = 0.02
    position_lr_max_steps: int = 500
    spatial_lr_scale: float = 10.0
    feature_lr: float = 0.01
    opacity_lr: float = 0.05
    scaling_lr: float = 0.005
    rotation_lr: float = 0.005
    adam_eps: float = 1e-15
    # densification and pruning
    densify_start: int = 100
    densify_end: int = 3000
    densify_interval: int = 100
    densify_grad_threshold: float = 0.01
    percent_dense: float = 0.01
    extent: float = 0.5
    min_opacity: float = 0.01
    opacity_reset_interval: int = 700
    max_gaussians: int = 1_000_000      # densification stops adding beyond this count (memory bound; 0 = none)
    stats_renders: int = 1              # the step's first renders that feed the statistics (0 = all): the trainer
    #                                     renders the random views first, then the reference view, and
    #                                     DreamGaussian counts the random (guided) view only
    # projection / rasterisation
    near: float = 0.01                  # camera-space depth below which a Gaussian is culled
    low_pass: float = 0.3               # px^2 added to the 2D covariance (3DGS's anti-aliasing dilation)
    backend: str = "auto"               # rasteriser backend: auto | torch | triton
    # mesh extraction (grid resolution: export.mesh.resolution; DreamGaussian's is 128)
    density_threshold: float = 1.0      # iso-level used when export.mesh.threshold is "auto"
    mesh_opacity_cutoff: float = 0.005
    mesh_block: int = 16                # grid cells per axis evaluated at once (bounded memory)
    albedo_neighbours: int = 16         # Gaussians blended for the colour at a surface point

    def to_dict(self) -> dict:
        return asdict(self)
