"""A ``zero123 eval`` JSON broken down by the size of the azimuth change, pair-by-pair win counts, and the mean
pair-by-pair difference to each baseline with its standard error (is a lead larger than the noise of the pairs?).

    python -m zero123.evaluation.breakdown bench/results/default_model/v0.3/eval_test_cpu_v03.json

Reads the per-pair rows the eval writes (``pairs[i]["delta_azimuth"]`` in degrees, target minus input, wrapped to
[-180, 180]; ``pairs[i][method]["psnr" | "ssim"]``); computes nothing from images.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Dict, List, Sequence

from ..errors import Zero123Error
from .runner import BASELINES, VAE_TARGET

#: edges of the |azimuth change| bins, degrees: [0, 30), [30, 60), [60, 90), [90, 135), [135, 180]
AZIMUTH_EDGES = (0.0, 30.0, 60.0, 90.0, 135.0, 180.0)


def load_result(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise Zero123Error(f"eval result not found: {path}")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise Zero123Error(f"{path} is not JSON: {e}") from None
    if not isinstance(result, dict) or "pairs" not in result or "methods" not in result:
        raise Zero123Error(f"{path} is not a `zero123 eval` result (no 'pairs' / 'methods')")
    return result


def by_azimuth(result: dict, edges: Sequence[float] = AZIMUTH_EDGES) -> List[dict]:
    """One row per bin ``[lo, hi)`` of ``abs(delta_azimuth)`` (the last bin includes ``hi``): ``lo``, ``hi``,
    ``n`` pairs, and per method the mean ``psnr`` / ``ssim`` over the bin's pairs (empty bins are left out)."""
    rows = []
    last = len(edges) - 2
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        sel = [p for p in result["pairs"]
               if lo <= abs(p["delta_azimuth"]) < hi or (k == last and abs(p["delta_azimuth"]) == hi)]
        if not sel:
            continue
        row: Dict = {"lo": lo, "hi": hi, "n": len(sel)}
        for m in result["methods"]:
            row[m] = {q: sum(p[m][q] for p in sel) / len(sel) for q in ("psnr", "ssim")}
        rows.append(row)
    return rows


def wins(result: dict, method: str, other: str, metric: str = "psnr") -> int:
    """How many pairs ``method`` scores strictly higher than ``other`` on ``metric``."""
    return sum(p[method][metric] > p[other][metric] for p in result["pairs"])


def paired_difference(result: dict, method: str, other: str, metric: str = "psnr") -> tuple[float, float]:
    """``(mean, standard error)`` over the pairs of ``method``'s score minus ``other``'s on ``metric`` (standard
    error: sample standard deviation, n - 1, over sqrt(n); 0 for one pair)."""
    d = [p[method][metric] - p[other][metric] for p in result["pairs"]]
    if not d:
        raise Zero123Error("the eval result has no pairs")
    return statistics.fmean(d), (statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0)


def model_methods(result: dict) -> List[str]:
    """The methods compared with the baselines: all but the baselines and the ``vae_target`` oracle."""
    return [m for m in result["methods"] if m not in BASELINES and m != VAE_TARGET]


def report(result: dict) -> str:
    methods = list(result["methods"])
    lines = ["| abs(azimuth change) | pairs | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for r in by_azimuth(result):
        cells = " | ".join(f"{r[m]['psnr']:.2f} / {r[m]['ssim']:.3f}" for m in methods)
        lines.append(f"| {r['lo']:g}-{r['hi']:g} | {r['n']} | {cells} |")
    n = len(result["pairs"])
    for m in model_methods(result):
        for b in ("input", "mean_train"):
            if b in result["methods"]:
                (dp, sp), (ds, ss) = (paired_difference(result, m, b, q) for q in ("psnr", "ssim"))
                lines.append(f"{m} beats {b} on PSNR in {wins(result, m, b)} of {n} pairs, "
                             f"on SSIM in {wins(result, m, b, 'ssim')}; mean difference +- standard error: "
                             f"PSNR {dp:+.2f} +- {sp:.2f} dB, SSIM {ds:+.3f} +- {ss:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="`zero123 eval --out` JSON files")
    args = ap.parse_args(argv)
    try:
        for path in args.results:
            print(f"{path} (PSNR dB / SSIM):")
            print(report(load_result(path)))
    except Zero123Error as e:
        print(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
