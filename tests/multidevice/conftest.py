"""Tests that need 8 devices: run by ``tests/test_sharding.py`` in a subprocess
with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``; skipped elsewhere.
"""

from __future__ import annotations

import jax
import pytest

NUM_DEVICES = 8


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
  """Session-scoped so that it runs (and skips) before any module fixture."""
  if jax.device_count() != NUM_DEVICES:
    pytest.skip(f"needs {NUM_DEVICES} devices, found {jax.device_count()}; run "
                f"with XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{NUM_DEVICES} (tests/test_sharding.py does)")
