"""Paired comparison of `zero123 eval-3d` runs: each variant's model row against the base's, on the objects both
finished (mean paired difference with its standard error, wins out of n), and every config's model row against
the base's extrude / sphere baselines. Written by bench/device/eval3d_variants.sh; runs on any eval3d.json files.

    python bench/eval3d_compare.py --base base/eval3d.json [--reference base_ref/eval3d.json] \\
        --variant bundled=bundled/eval3d.json --variant cfg5=cfg5/eval3d.json --out DIR

``--reference``: a run of the base's other rows (gt_views, extrude, sphere) in a folder of its own (the device
script runs them in separate processes). Writes DIR/compare.md (tables), DIR/compare.json (the numbers) and
DIR/table_base_all.txt (the base with every row, `zero123 eval-3d`'s table); prints compare.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zero123.evaluation.eval3d import format_table, paired_comparison, summarize
from zero123.export.writers import atomic_write_bytes

METRICS = ("chamfer", "iou", "f@0.1", "psnr")


def _objects(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())["objects"]
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"eval3d_compare: cannot read {path}: {exc}")


def _merge(base: dict, reference: dict) -> dict:
    """Per object: the base's rows, then the reference's (the base's other rows, run apart)."""
    return {i: {**base.get(i, {}), **reference.get(i, {})} for i in list(base) + [i for i in reference if i not in base]}


def _md_rows(name: str, cmp: dict) -> list[str]:
    cells = []
    for k in METRICS:
        m = cmp["metrics"].get(k)
        cells.append("-" if m is None else f"{m['delta']:+.4f} +-{m['se']:.4f} ({m['wins']}/{m['n']})")
    return [f"| {name} | {cmp['n']} | " + " | ".join(cells) + " |"]


def compare(base: dict, variants: dict[str, dict]) -> dict:
    """``{"vs_base": {variant: paired_comparison}, "vs_baselines": {config: {baseline: paired_comparison}}}``."""
    out = {"vs_base": {}, "vs_baselines": {}}
    for name, objs in variants.items():
        out["vs_base"][name] = paired_comparison(base, objs, metrics=METRICS)
    for name, objs in {"base": base, **variants}.items():
        out["vs_baselines"][name] = {b: paired_comparison(base, objs, row=b, metrics=METRICS)
                                     for b in ("extrude", "sphere")
                                     if any(b in rows for rows in base.values())}
    return out


def to_markdown(result: dict) -> str:
    head = "| config | n | " + " | ".join(f"d {k}" for k in METRICS) + " |"
    sep = "|---|---|" + "---|" * len(METRICS)
    lines = ["Model row of each variant minus the base's (paired, same objects; mean +- standard error, "
             "(objects where the variant is better / n); chamfer: lower is better, the others higher)", "",
             head, sep]
    for name, cmp in result["vs_base"].items():
        lines += _md_rows(name, cmp)
    for b in ("extrude", "sphere"):
        rows = [(name, d[b]) for name, d in result["vs_baselines"].items() if b in d]
        if rows:
            lines += ["", f"Model row of each config minus the base's {b} baseline (paired)", "", head, sep]
            for name, cmp in rows:
                lines += _md_rows(name, cmp)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="eval3d.json of the base (its model row)")
    ap.add_argument("--reference", type=Path, default=None, help="eval3d.json of the base's other rows")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON", help="a variant's eval3d.json")
    ap.add_argument("--out", type=Path, required=True, help="folder for compare.md / compare.json")
    args = ap.parse_args(argv)
    variants = {}
    for v in args.variant:
        name, sep, path = v.partition("=")
        if not sep or not name:
            sys.exit(f"eval3d_compare: --variant wants NAME=JSON, got {v!r}")
        variants[name] = _objects(Path(path))
    base = _objects(args.base)
    if args.reference is not None:
        base = _merge(base, _objects(args.reference))
    result = compare(base, variants)
    rows = [r for r in ("model", "gt_views", "extrude", "sphere") if any(r in o for o in base.values())]
    summary = {"settings": {}, "objects_scored": len(base), "objects_selected": len(base),
               "summary": summarize(base, rows)}
    result["base_summary"] = summary["summary"]
    text = to_markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "compare.json", (json.dumps(result, indent=1) + "\n").encode())
    atomic_write_bytes(args.out / "compare.md", text.encode())
    atomic_write_bytes(args.out / "table_base_all.txt", (format_table(summary) + "\n").encode())
    print(format_table(summary))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
