"""Shared test fixtures. Reference data lives in ``../shared/fixtures`` (CI) or ``$ZERO123_FIXTURES``."""

import os
import shutil
from pathlib import Path

import pytest

# Without an NVIDIA GPU, Triton kernels (zero123.fields.hash_grid_triton) run under Triton's interpreter on CPU
# tensors. The switch is read when triton.language is first imported, so it is set here, before any test module.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]


def _fixtures_dir() -> Path | None:
    candidates = [os.environ.get("ZERO123_FIXTURES"), REPO.parent / "shared" / "fixtures", REPO / "shared" / "fixtures"]
    for c in candidates:
        if c and (Path(c) / "tiny_zero123_ldm.ckpt").exists():
            return Path(c)
    return None


def _spec_dir() -> Path | None:
    candidates = [os.environ.get("ZERO123_SPEC"), REPO.parent / "shared" / "spec", REPO / "shared" / "spec"]
    for c in candidates:
        if c and (Path(c) / "zero123_ldm_keys.tsv").exists():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    d = _fixtures_dir()
    if d is None:
        pytest.fail("reference fixtures not found: put shared/ beside the repo or set ZERO123_FIXTURES")
    return d


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    d = _spec_dir()
    if d is None:
        pytest.fail("spec not found: put shared/ beside the repo or set ZERO123_SPEC")
    return d


@pytest.fixture(scope="session")
def tiny_model():
    """A random-weight tiny Zero123Model (32 px images, 8x8 latents), deterministic."""
    from zero123.models.configs import tiny_config

    return tiny_config().build(seed=0).eval()
