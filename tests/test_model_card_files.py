"""The bundled model's card (shipped in the wheel) and the run records beside it in the repository: every file the
card names exists where it says, and bench/results/default_model/SUMMARY.md is what the raw files give."""

import importlib.util
import re
from pathlib import Path

from zero123.loading import bundled_model_path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "default_model"


def test_card_names_only_files_that_exist():
    card = (bundled_model_path() / "README.md").read_text()
    assert "relative to the root of the zero123 source repository" in card
    # repository paths: tools/..., bench/..., configs/... (placeholders such as v<version>/ or ..._v03 skipped)
    paths = set(re.findall(r"\b((?:tools|bench|configs)/[\w./<>-]*[\w>])", card))
    concrete = {p for p in paths if "<" not in p and "..." not in p}
    assert {"tools/default_model/device_finetune.sh", "bench/results/default_model/SUMMARY.md"} <= concrete
    missing = sorted(p for p in concrete if not (REPO / p).exists())
    assert not missing, f"the model card names paths the repository lacks: {missing}"
    # result and log files named bare: each lives in one version folder
    names = set(re.findall(r"`((?:eval|conditioning|finetune)_[\w.]+\.(?:json|jsonl|yaml))`", card))
    assert len(names) > 15
    stored = {p.name for p in RESULTS.glob("v*/*")}
    assert not sorted(names - stored), f"not under bench/results/default_model/v*/: {sorted(names - stored)}"
    assert not list(RESULTS.glob("*.json*")), "raw files belong in the version folders"


def test_summary_is_up_to_date():
    spec = importlib.util.spec_from_file_location("default_model_summary", REPO / "bench" / "default_model_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.summary()
    assert (RESULTS / "SUMMARY.md").read_text() == text
    assert "14.95 / 0.757" in text  # v0.8's headline test result, read from v0.8/eval_test_cpu_v08.json
    assert [line[3:7] for line in text.splitlines() if line.startswith("## v")] == [f"v0.{i}" for i in range(1, 9)]
