"""Shared test settings: hypothesis profiles.

`default` is what `make test` runs; `fast` is for the edit-test loop
(`make test-fast`); select with --hypothesis-profile.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fast", max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("default")
