"""Measured effect of how ``to3d`` prepares the input view, against threestudio's preparation (issue 23, part 1).

threestudio (``stable_zero123_guidance.py`` ``prepare_embeddings``) reads the RGBA file as is,
``cv2.resize(..., INTER_AREA)`` to the model size, and composites on white in float. ``to3d`` now does the same
resize + float composite (``zero123.pipelines.image_to_3d.condition_image``) but, by default, first recentres the
object to 0.8 of the frame (``reference.recentre=True``, so raw photos work; ``reference.recentre=False`` is
threestudio's path exactly). Rows (relative L2 errors against threestudio's input view of the same file):

* ``old``: the previous preparation, PIL composite in uint8 then LANCZOS to the model size (after recentring);
* ``recentred (default)``: today's default (recentring, then threestudio's resize/composite);
* ``uint8 composite only``: threestudio's path but the white composite in uint8 (the compositing alone);
* for each: the input image, the CLIP embedding, the concat latent, and the SDS latent gradient of one step with
  fixed draws (t, noise, posterior eps) for 4 random renders.

Inputs: the threestudio fixture's 32 px cond image with the tiny checkpoint (as Stable Zero123), and
``examples/mug.png`` with the bundled model, first segmented + recentred into an RGBA at 256 px (what threestudio's
``preprocess_image.py`` gives), then prepared again from that file. CPU, seconds.

    python bench/input_view_prep.py --out bench/results/input_view_prep.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def old_condition(image, size: int, model_size: int) -> torch.Tensor:
    """The preparation before this change: recentre, PIL uint8 composite, LANCZOS to the model size."""
    from PIL import Image

    from zero123.preprocessing import image_to_tensor, prepare_input_image

    prep = prepare_input_image(image, size=size)
    return image_to_tensor(prep.rgb.resize((model_size, model_size), Image.Resampling.LANCZOS))


def uint8_composite(image, model_size: int) -> torch.Tensor:
    """The file as is, resized as threestudio does, but composited on white in uint8 (PIL) instead of float."""
    import cv2
    from PIL import Image

    from zero123.preprocessing import composite_on_white, image_to_tensor

    rgba = cv2.resize(np.asarray(Image.open(image).convert("RGBA")), (model_size, model_size),
                      interpolation=cv2.INTER_AREA)
    return image_to_tensor(composite_on_white(Image.fromarray(rgba, "RGBA")))


def measure(model, path: Path, size: int) -> dict:
    from zero123.guidance import SDSConfig, SDSGuidance
    from zero123.pipelines.image_to_3d import prepare_reference

    s = model.image_size
    conds = {"threestudio": prepare_reference(path, size, s, recentre=False).condition,
             "recentred (default)": prepare_reference(path, size, s, recentre=True).condition,
             "old (recentred, uint8 composite, LANCZOS)": old_condition(path, size, s),
             "uint8 composite only (not recentred)": uint8_composite(path, s)}
    gen = torch.Generator().manual_seed(0)
    B, h = 4, s // model.latent_downsample
    rgb = torch.rand(B, s, s, 3, generator=gen)
    cams = (torch.tensor([0.0, 30.0, -10.0, 15.0]), torch.tensor([0.0, 90.0, -135.0, 180.0]), torch.full((B,), 3.8))
    draws = {"timesteps": torch.randint(300, 981, (B,), generator=gen),
             "noise": torch.randn(B, 4, h, h, generator=gen), "posterior_eps": torch.randn(B, 4, h, h, generator=gen)}
    out = {}
    with torch.no_grad():
        for name, c in conds.items():
            g = SDSGuidance(model, c, SDSConfig())
            out[name] = {"image": c, "clip": g.clip_embedding, "concat": g.concat_latent,
                         "grad": g(rgb, *cams, step=0, **draws).grad}
    ref = out.pop("threestudio")
    return {name: {k: rel(v[k], ref[k]) for k in ref} for name, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixtures", default=os.environ.get("ZERO123_FIXTURES", str(REPO.parent / "shared" / "fixtures")))
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from zero123.loading import load_model
    from zero123.preprocessing import prepare_input_image

    fx = Path(a.fixtures)
    results = {}
    tiny = load_model(fx / "tiny_zero123_ldm.ckpt", variant="stable_zero123").eval()
    results["fixture cond_rgba_32.png, tiny ckpt (32 px)"] = measure(tiny, fx / "threestudio_sds" / "cond_rgba_32.png",
                                                                      32)
    bundled = load_model(None).eval()
    with tempfile.TemporaryDirectory() as tmp:
        framed = Path(tmp) / "mug_rgba.png"
        prepare_input_image(REPO / "examples" / "mug.png", size=256).rgba.save(framed)
        results[f"examples/mug.png framed at 256, bundled model ({bundled.image_size} px)"] = measure(
            bundled, framed, 256)
    print("| input | preparation | image | CLIP emb. | concat latent | SDS grad |\n|---|---|---|---|---|---|")
    for inp, rows in results.items():
        for name, r in rows.items():
            print(f"| {inp} | {name} | {r['image']:.2e} | {r['clip']:.2e} | {r['concat']:.2e} | {r['grad']:.2e} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"relative_error_vs_threestudio": results,
                                           "torch": torch.__version__}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
