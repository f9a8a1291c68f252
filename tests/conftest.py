"""Suite-wide marks: data from ../shared and the CUDA device.

``@pytest.mark.shared_data("traces/tiresias/60_job.csv", ...)`` on a test (or a parameter set)
that reads those paths under ``../shared`` (next to the repository): without them the test is
skipped, or fails naming them when ``CI=true`` (CI must run everything). ``@pytest.mark.gpu``:
the test needs a CUDA device and is skipped without one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shared_data(*paths): reads these paths under ../shared (skipped without "
        "them, failed under CI=true)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    missing = [SHARED / p for mark in item.iter_markers("shared_data") for p in mark.args
               if not (SHARED / p).exists()]
    if missing:
        names = ", ".join(str(p) for p in missing)
        if in_ci():
            pytest.fail(f"CI=true and the shared data this test needs is missing: {names}",
                        pytrace=False)
        pytest.skip(f"shared data missing: {names}")
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")


# PostgreSQL: one server per session, a database per test (tests/pg.py).
from pg import db_url, pg_server, pg_url  # noqa: E402, F401
