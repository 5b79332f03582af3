"""The suite's own set-up: the README's commands are CI's, and the device count
is the suite's choice (tests/conftest.py), not the caller's."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax

REPO = pathlib.Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
  """The install-and-run lines of the README's fenced bash blocks, in order."""
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
  return [line for block in blocks for line in block.splitlines()
          if line.startswith("python -m pip install")]


def test_ci_runs_the_readme_commands_verbatim():
  commands = _readme_commands()
  assert len(commands) == 2, commands          # the main job, the test suite
  main_job, tests = commands
  assert "experiments.train" in main_job and "[test]" not in main_job
  assert "pytest" in tests
  ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
  assert main_job in ci and tests in ci
  assert ci.index(main_job) < ci.index(tests)
  # Each in a fresh venv of its own: a venv is made between the two.
  between = ci[ci.index(main_job):ci.index(tests)]
  assert any(line.startswith("python3 -m venv") for line in between)
  assert any(line.startswith("python3 -m venv")
             for line in ci[:ci.index(main_job)])


def test_this_process_has_the_pinned_device_count():
  assert jax.device_count() == int(os.environ["LAMER_TEST_DEVICES"])
  assert jax.default_backend() == "cpu"


def _run_pinned_test(env: dict[str, str]) -> str:
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       f"{__file__}::test_this_process_has_the_pinned_device_count"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0 and "1 passed" in out, out[-3000:]
  return out


def test_callers_device_count_does_not_reach_the_tests():
  """A caller with 8 forced host devices still runs the suite on one; a test
  that wants several asks for them with LAMER_TEST_DEVICES."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("LAMER_TEST_DEVICES", "JAX_PLATFORMS")}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  _run_pinned_test(env)                                  # sees 1 device
  _run_pinned_test({**env, "LAMER_TEST_DEVICES": "3"})   # sees 3 devices
