"""The suite chooses its device count; the caller's environment does not.

A user with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (or eight
GPUs) would otherwise run every test on a mesh of eight, where the tests'
small batches do not split and the expected numbers are those of one device.
So, before anything imports jax, this pins the test process to the CPU with
``LAMER_TEST_DEVICES`` devices (default 1). The tests that need several
devices start subprocesses that set it themselves
(``tests/test_sharding.py``: 8 for ``tests/multidevice``, 2 x 4 for the
two-process test). Subprocesses started by tests inherit the pinned
environment.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

DEVICES_VAR = "LAMER_TEST_DEVICES"
_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S*")


def pin_devices(environ: dict[str, str], count: int) -> dict[str, str]:
  """``environ`` with jax on the CPU and exactly ``count`` host devices."""
  flags = _COUNT_FLAG.sub("", environ.get("XLA_FLAGS", "")).split()
  flags.append(f"--xla_force_host_platform_device_count={count}")
  return {**environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu",
          DEVICES_VAR: str(count)}


def _requested() -> int:
  raw = os.environ.get(DEVICES_VAR, "1")
  if not raw.isdigit() or int(raw) < 1:
    raise ValueError(f"{DEVICES_VAR}={raw!r}: expected a device count >= 1")
  return int(raw)


if "jax" in sys.modules:   # too late to choose: say so rather than test on a mesh
  raise RuntimeError("jax was imported before tests/conftest.py could pin the "
                     "device count; run the suite with `python -m pytest`")
os.environ.update(pin_devices(dict(os.environ), _requested()))

# One persistent compilation cache for the session's processes: the xdist
# workers and the subprocesses the tests start (the CLI runs, the notebook
# kernels, the multi-device suite) compile the same tiny programs again and
# again. The key covers the program, the XLA flags (so the device count) and
# the jax version, so a hit is the same executable. LAMER_TEST_CACHE=0 (or a
# JAX_COMPILATION_CACHE_DIR of your own) turns it off (or moves it).
if os.environ.get("LAMER_TEST_CACHE", "1") != "0":
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
      tempfile.gettempdir(), f"lamer-jax-test-cache-{os.getuid()}"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

