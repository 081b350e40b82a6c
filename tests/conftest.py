"""Shared test configuration: hypothesis profiles.

The default profile ("ci") keeps the whole suite within CI's budget; the
"slow" profile runs the properties with many more examples:

    pytest --hypothesis-profile=slow -m "slow or not slow"
"""

from __future__ import annotations

import os

# Under pytest-xdist every core runs a worker: one thread each (also for the CLI subprocesses the
# tests start), since two threads on a busy core run several times slower than one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

from hypothesis import HealthCheck, settings  # noqa: E402

# diffusers and transformers log advice meant for hub users; keep test output readable.
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,  # CI machines are shared; hangs are caught by explicit time limits
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "slow",
    max_examples=2_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.load_profile("ci")

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
