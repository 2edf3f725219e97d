"""Shared test set-up: deterministic, small, and polite to a 2-core CI machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

#: BBBC039 / VGG data beside the checkout; tests that need it skip when it is absent.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _torch_threads_and_seed():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _user_model_dir(tmp_path, monkeypatch):
    """Every test gets its own empty user model directory."""
    monkeypatch.setenv("NALU_COUNT_MODEL_DIR", str(tmp_path / "user_models"))
    yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the checkout")
    return SHARED_DATA


@pytest.fixture
def options():
    """The inference engine's OPTIONS, restored after the test (tests switch them freely)."""
    from napari_nalu_count.infer import engine

    saved = dict(engine.OPTIONS)
    yield engine.OPTIONS
    engine.OPTIONS.clear()
    engine.OPTIONS.update(saved)
