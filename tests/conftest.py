"""Shared test configuration: hypothesis profiles.

The default profile ("ci") keeps the whole suite within CI's budget; the
"slow" profile runs the properties with many more examples:

    pytest --hypothesis-profile=slow -m "slow or not slow"
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
