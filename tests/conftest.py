"""Test-wide settings: headless plotting, deterministic seeds."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

try:
    import torch

    # One intra-op thread: the suite's processes already share the machine's cores, and torch's
    # busy-waiting OpenMP workers made contended tests 5-50x slower.
    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass


@pytest.fixture(autouse=True)
def _seed():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    torch.manual_seed(0)


def pytest_configure(config):
    """``-n N`` (pytest-xdist) schedules with ``--dist loadgroup`` unless told otherwise: tests
    marked ``xdist_group`` (those sharing one Verilator build, tests/helpers.py) run on one worker,
    so the other never idles on the build lock, and xdist sends the largest groups first, so the long
    builds start at once. Ungrouped tests are balanced as with ``--dist load``."""
    if hasattr(config, "workerinput"):  # a worker: it runs what the controller sends
        return
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) == "load":
        config.option.dist = "loadgroup"
