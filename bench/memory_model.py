"""The memory model behind ``zero123 to3d --max-memory``: autograd memory per kept ray sample of a render.

Renders the reference view of the default recipe (512 samples per ray, the default hash-grid NeRF, diffuse
shading with normals and the 3D normal-smoothness perturbation: the most a step's render keeps) of a randomly
initialised field and counts the bytes of the tensors autograd saves for the backward (unique storages, through
``torch.autograd.graph.saved_tensors_hooks``) and of the outputs, divided by the number of kept samples. That is
what a part of a chunked render holds between its forward and its backward; the backward's transients come on top
(``BACKWARD_FACTOR`` in :mod:`zero123.rendering.memory`).

    python bench/memory_model.py --size 96 --out bench/results/memory_model_cpu.json
    python bench/memory_model.py --device cuda --backend auto --size 256      # on a GPU (Triton hash grid)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zero123.fields import FieldConfig, NeRFField  # noqa: E402
from zero123.rendering.cameras import orbit_cameras  # noqa: E402
from zero123.rendering.volume import RenderSettings, render  # noqa: E402


def measure(device: str, backend: str, size: int, shading: str, normals: bool) -> dict:
    torch.manual_seed(0)
    field = NeRFField(FieldConfig(encoding_backend=backend)).to(device)
    cam = orbit_cameras(5.0, 0.0, 3.8, 20.0)
    storages: dict = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            storages[(s.data_ptr(), s.device)] = s.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = render(field, cam, size, background=torch.ones(1, 3), shading=shading, ambient_ratio=1.0,
                     with_normals=normals, normal_perturb_std=0.01 if normals else 0.0, settings=RenderSettings(),
                     generator=torch.Generator(device).manual_seed(0))
    n = out.stats["samples"]
    for name in ("weights", "t_dirs", "points", "normal", "normal_perturb"):
        x = getattr(out, name)
        if x is not None:
            s = x.untyped_storage()
            storages[(s.data_ptr(), s.device)] = s.nbytes()
    param_bytes = sum(p.numel() * p.element_size() for p in field.parameters())
    # parameter storages saved by the graph (hash tables, MLP weights) are resident anyway: not per sample
    param_ptrs = {p.untyped_storage().data_ptr() for p in field.parameters()}
    saved = sum(b for (ptr, _), b in storages.items() if ptr not in param_ptrs)
    return {"device": device, "backend": backend, "size": size, "shading": shading, "normals": normals,
            "samples": n, "saved_bytes": saved, "bytes_per_sample": saved / max(1, n), "param_bytes": param_bytes}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = [measure(args.device, args.backend, args.size, sh, nr)
            for sh, nr in (("diffuse", True), ("albedo", False))]
    for r in rows:
        print(f"{r['shading']:8s} normals={r['normals']!s:5s} samples={r['samples']:8d} "
              f"saved={r['saved_bytes'] / 2**20:8.1f} MiB  {r['bytes_per_sample']:7.0f} B/sample")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
