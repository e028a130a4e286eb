"""Image metrics for novel-view evaluation: PSNR, SSIM and (with local weights) LPIPS.

All functions take images ``[B,3,H,W]`` (or ``[3,H,W]``) as float tensors **in [0, 1]** and return one value per
image (``[B]``, float64). Higher is better for PSNR / SSIM, lower for LPIPS.

* ``psnr``: ``10 log10(1 / MSE)`` over all pixels and channels; capped at :data:`PSNR_MAX_DB` for identical images.
* ``ssim``: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1,
  population covariances, averaged over the 'valid' interior (the window fully inside) and the channels, computed by
  ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=1, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)``.
* ``LPIPS`` (Zhang et al. 2018), AlexNet or VGG16 variant, implemented here in plain PyTorch (no torchvision). It
  loads a state dict in the format of the ``lpips`` package's ``LPIPS`` module, backbone included; make one once
  on a machine with the ``lpips`` package and network access::

      import lpips, torch; torch.save(lpips.LPIPS(net="alex").state_dict(), "lpips_alex.pth")

  Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from ..errors import Zero123Error

__all__ = ["PSNR_MAX_DB", "psnr", "ssim", "LPIPS", "load_lpips"]

#: PSNR reported for (numerically) identical images: MSE is clamped at 1e-10.
PSNR_MAX_DB = 100.0


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise Zero123Error(f"{name} must be a torch tensor")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise Zero123Error(f"{name} must be [B,C,H,W] or [C,H,W], got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def _pair(a, b):
    a, b = _as_batch(a, "prediction"), _as_batch(b, "target")
    if a.shape != b.shape:
        raise Zero123Error(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0,1] (peak 1): ``[B]``."""
    a, b = _pair(pred, target)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(10 ** (-PSNR_MAX_DB / 10)))


def ssim(pred: torch.Tensor, target: torch.Tensor, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of images in [0,1]: ``[B]`` float64 (1 for identical images). See the module docstring.

    Computed by ``skimage.metrics.structural_similarity`` per image on the CPU (its Gaussian window is
    ``2 int(3.5 sigma + 0.5) + 1`` px wide: 11 for sigma 1.5). It gives the numbers of the earlier hand-written
    conv2d version to 1e-16 and is ~40x faster on the CPU (4 x 256 px in float64: 0.18 s vs 6.8 s, under load).
    """
    from skimage.metrics import structural_similarity

    a, b = _pair(pred, target)
    win_size = 2 * int(3.5 * sigma + 0.5) + 1
    H, W = a.shape[-2:]
    if H < win_size or W < win_size:
        raise Zero123Error(f"images of {H}x{W} px are smaller than the {win_size}x{win_size} SSIM window")
    a, b = a.permute(0, 2, 3, 1).cpu().numpy(), b.permute(0, 2, 3, 1).cpu().numpy()  # [B,H,W,C]
    return torch.tensor([structural_similarity(x, y, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                               sigma=sigma, use_sample_covariance=False, K1=k1, K2=k2)
                         for x, y in zip(a, b)], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------- LPIPS
#: backbone layers as (kind, args) in torchvision's ``features`` numbering; slices end after these indices
_ALEX = {0: ("conv", 3, 64, 11, 4, 2), 1: ("relu",), 2: ("pool",), 3: ("conv", 64, 192, 5, 1, 2), 4: ("relu",),
         5: ("pool",), 6: ("conv", 192, 384, 3, 1, 1), 7: ("relu",), 8: ("conv", 384, 256, 3, 1, 1), 9: ("relu",),
         10: ("conv", 256, 256, 3, 1, 1), 11: ("relu",)}
_ALEX_SLICES = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_SLICES = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]


def _vgg_layers():
    layers, c_in, i = {}, 3, 0
    for v in _VGG_CFG:
        if v == "M":
            layers[i] = ("pool2",)
            i += 1
        else:
            layers[i] = ("conv", c_in, v, 3, 1, 1)
            layers[i + 1] = ("relu",)
            c_in, i = v, i + 2
    return layers


def _make(spec):
    if spec[0] == "conv":
        _, ci, co, k, s, p = spec
        return nn.Conv2d(ci, co, k, stride=s, padding=p)
    if spec[0] == "relu":
        return nn.ReLU(inplace=False)
    if spec[0] == "pool":
        return nn.MaxPool2d(kernel_size=3, stride=2)
    return nn.MaxPool2d(kernel_size=2, stride=2)


class LPIPS(nn.Module):
    """Learned perceptual image patch similarity, ``net`` = ``"alex"`` or ``"vgg"``; parameter names match the
    ``lpips`` package (``net.sliceK.N.*``, ``linK.model.1.weight``, ``scaling_layer.shift/scale``).

    ``forward(pred, target)`` takes images in [0,1] ``[B,3,H,W]`` and returns ``[B]`` (0 for identical images).
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in ("alex", "vgg"):
            raise Zero123Error(f"LPIPS network must be 'alex' or 'vgg', got {net!r}")
        self.net_name = net
        layers, slices = (_ALEX, _ALEX_SLICES) if net == "alex" else (_vgg_layers(), _VGG_SLICES)
        self.net = nn.Module()
        channels = []
        for k, (lo, hi) in enumerate(slices, start=1):
            sl = nn.Sequential()
            for i in range(lo, hi):
                sl.add_module(str(i), _make(layers[i]))
                if layers[i][0] == "conv":
                    c = layers[i][2]
            channels.append(c)
            setattr(self.net, f"slice{k}", sl)
        self.channels = channels
        for k, c in enumerate(channels):
            lin = nn.Module()
            lin.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))
            setattr(self, f"lin{k}", lin)
        self.scaling_layer = nn.Module()
        self.scaling_layer.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.scaling_layer.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def _features(self, x):
        x = (x - self.scaling_layer.shift) / self.scaling_layer.scale
        feats = []
        for k in range(1, 6):
            x = getattr(self.net, f"slice{k}")(x)
            feats.append(x)
        return feats

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a, b = _pair(pred, target)
        dtype = self.scaling_layer.shift.dtype
        dev = self.scaling_layer.shift.device
        a, b = (a.to(dev, dtype) * 2 - 1), (b.to(dev, dtype) * 2 - 1)  # lpips works on [-1,1]
        fa, fb = self._features(a), self._features(b)
        total = 0.0
        for k, (x, y) in enumerate(zip(fa, fb)):
            x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = getattr(self, f"lin{k}").model((x - y) ** 2)
            total = total + d.mean((2, 3))[:, 0]
        return total.to(torch.float64)


def load_lpips(path, device: Optional[str] = None) -> LPIPS:
    """An :class:`LPIPS` with weights from a local ``.pth`` / ``.pt`` / ``.safetensors`` state dict (the
    ``lpips`` package's ``LPIPS(net=...).state_dict()``); the network (alex / vgg) is read from the keys.
    ``Zero123Error`` if the file is missing or does not hold LPIPS weights."""
    path = Path(path)
    if not path.is_file():
        raise Zero123Error(f"{path}: LPIPS weights not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Dict[str, torch.Tensor] = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise Zero123Error(f"{path}: cannot read LPIPS weights ({type(exc).__name__}: {exc})"[:300]) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or "net.slice1.0.weight" not in sd:
        raise Zero123Error(f"{path}: not an LPIPS state dict (expected keys like 'net.slice1.0.weight'; save "
                           "lpips.LPIPS(net='alex').state_dict())")
    net = "alex" if tuple(sd["net.slice1.0.weight"].shape) == (64, 3, 11, 11) else "vgg"
    model = LPIPS(net)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise Zero123Error(f"{path}: LPIPS-{net} weights are missing {len(missing)} tensors (e.g. {missing[0]})")
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise Zero123Error(f"{path}: LPIPS tensor {bad[0]} has shape {tuple(sd[bad[0]].shape)}, "
                           f"expected {tuple(own[bad[0]].shape)}")
    model.load_state_dict({k: sd[k].float() for k in own})
    if device is not None:
        model.to(device)
    return model
