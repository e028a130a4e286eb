"""The memory model behind ``zero123 to3d --max-memory``: bytes per kept ray sample of a render's forward+backward.

Renders one view of the default recipe's field (the default hash-grid NeRF, 512 samples per ray, diffuse shading
with normals and the 3D normal-smoothness points: the most a step's render keeps) from a random initialisation,
then back-propagates a loss of every output, while a ``TorchDispatchMode`` counts the bytes of the live tensor
storages made under it (parameters excluded). With small internal chunks (hash grid, sampling) the chunk-bounded
transients are negligible, so ``peak / samples`` is the per-sample cost (``BYTES_PER_SAMPLE`` in
:mod:`zero123.utils.memory`); ``held`` is what the graph keeps between forward and backward.

    python bench/memory_model.py --size 48 --out bench/results/memory_model_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zero123.fields import FieldConfig, NeRFField  # noqa: E402
from zero123.rendering.cameras import orbit_cameras  # noqa: E402
from zero123.rendering.volume import RenderSettings, render  # noqa: E402


class LiveBytes(TorchDispatchMode):
    """Current and peak bytes of the tensor storages created by the ops run under it."""

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def _track(self, t: torch.Tensor) -> None:
        s = t.untyped_storage()
        key, n = s.data_ptr(), s.nbytes()
        if n == 0 or key in self.live:
            return
        self.live[key] = n
        self.current += n
        self.peak = max(self.peak, self.current)

        def free(k=key, n=n):
            if self.live.pop(k, None) is not None:
                self.current -= n

        weakref.finalize(s, free)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def measure(size: int, chunk: int) -> dict:
    torch.manual_seed(0)
    field = NeRFField(FieldConfig(encoding_backend="torch", chunk=chunk))
    cam = orbit_cameras(5.0, 0.0, 3.8, 20.0)
    settings = RenderSettings(max_candidates=8 * chunk, eval_chunk=chunk)
    mode = LiveBytes()
    with mode:
        out = render(field, cam, size, background=torch.ones(1, 3), shading="diffuse", ambient_ratio=1.0,
                     with_normals=True, normal_perturb_std=0.01, settings=settings,
                     generator=torch.Generator().manual_seed(0))
        held, forward_peak = mode.current, mode.peak
        loss = (out.rgb.mean() + out.opacity.mean() + out.comp_normal.mean()
                + (out.normal - out.normal_perturb).abs().mean())
        loss.backward()
    n = out.stats["samples"]
    return {"size": size, "chunk": chunk, "samples": n, "held_bytes_per_sample": held / n,
            "forward_peak_bytes_per_sample": forward_peak / n, "peak_bytes_per_sample": mode.peak / n}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--chunk", type=int, default=8192, help="hash-grid / sampling chunk (points)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    r = measure(args.size, args.chunk)
    print(f"{r['samples']} samples: held {r['held_bytes_per_sample']:.0f} B/sample, forward peak "
          f"{r['forward_peak_bytes_per_sample']:.0f}, forward+backward peak {r['peak_bytes_per_sample']:.0f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
