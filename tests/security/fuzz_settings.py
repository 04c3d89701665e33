"""Hypothesis settings shared by the fuzz tests (the pipeline fuzzer and schemathesis).

Two profiles: ``ci`` (``CI=true``) is derandomized, so every CI run tries the same examples and a
failure reproduces; ``dev`` explores new examples each run. Neither keeps an example database
(no folder appears in the checkout); a failure prints the ``@reproduce_failure`` blob instead.
``AVATAR_FUZZ_SCALE`` multiplies every example budget for a longer local run, e.g.
``AVATAR_FUZZ_SCALE=20 pytest tests/imaging/test_fuzz.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.conftest import IN_CI

settings.register_profile(
    "avatar-ci",
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "avatar-dev",
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("avatar-ci" if IN_CI else "avatar-dev")
SCALE = max(1, int(os.environ.get("AVATAR_FUZZ_SCALE", "1") or 1))


def fuzz_settings(*, max_examples: int, **overrides: object) -> settings:
    """The profile of this run with a bounded number of examples (times AVATAR_FUZZ_SCALE)."""
    return settings(PROFILE, max_examples=max_examples * SCALE, **overrides)  # type: ignore[arg-type]
