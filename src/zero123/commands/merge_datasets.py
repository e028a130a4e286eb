"""``zero123 merge-datasets --out OUT ROOT ROOT ...``: several renders as one training dataset (links, no copies)."""

from __future__ import annotations

import argparse


def add_parser(sub, name, summary):
    p = sub.add_parser(name, help=summary, description=summary + ".",
                       epilog="example: more training objects for a dataset whose test split must not move\n"
                              "  zero123 render-dataset --out renders --procedural 2000 --test-fraction 0.1\n"
                              "  zero123 render-dataset --out extra --procedural 6000 --seed 1 --test-fraction 0\n"
                              "  zero123 merge-datasets --out merged renders extra\n"
                              "Objects keep the split their source gave them; OUT/<id> links to the source folders.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", metavar="ROOT", help="datasets from `zero123 render-dataset`")
    p.add_argument("--out", "-o", required=True, help="new folder for the merged dataset (must not exist)")
    return p


def run(args) -> int:
    from ..data.merge import merge_datasets

    m = merge_datasets(args.out, args.roots)
    counts = ", ".join(f"{len(m.objects_in(s))} {s}" for s in ("train", "val", "test"))
    print(f"merged {len(args.roots)} datasets into {args.out}: {len(m.objects)} objects ({counts})")
    return 0
