"""Shared test configuration."""

from hypothesis import settings

# Hypothesis' per-example deadline measures wall time; on a loaded 2-core CI machine it
# fails correct code. Properties are still checked on every example.
settings.register_profile("dsat", deadline=None)
settings.load_profile("dsat")
