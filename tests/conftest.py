"""Shared pytest set-up: the --runslow switch and small audio helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep TensorFlow quiet and deterministic on the 2-core CI machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

SHARED_US8K = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "urbansound8k-folds1-2"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test, run with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def shared_us8k() -> Path:
    """The shared real UrbanSound8K folds 1-2, or skip when this machine lacks them."""
    if not (SHARED_US8K / "metadata" / "UrbanSound8K.csv").is_file():
        pytest.skip(f"shared UrbanSound8K folds not found at {SHARED_US8K}")
    return SHARED_US8K
