"""The Colab notebooks run top to bottom (colab/*.ipynb).

Each notebook is executed with nbclient in a Jupyter kernel of this
interpreter, from the repository root, with its ``parameters`` cell followed by
an injected cell of tiny values (papermill's convention): the random
``tiny-llama`` on guess-the-number, one turn, a few train steps and two
held-out tasks, every workdir under pytest's tmp_path. The tests check what a
reader would look at: the pass@k tables, the figures (inline PNGs and files)
and the runs' metrics; and that the install cell installed nothing.

Each notebook takes 45 to 70 s on a 2-core CPU shared with another job (most
of it compiling train steps: one run in the quickstart, three in the
ablations), hence the ``slow`` marker.
"""

from __future__ import annotations

import base64
import json
import pathlib
import sys
import time

from ipykernel import kernelspec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
COLAB = REPO / "colab"
KERNEL_NAME = "lamer-jax-test"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMEOUT_S = 600   # per cell; the slowest cell trains and compiles

# Shared by both notebooks: a random 2-layer model on a 1-turn game.
TINY = {"MODEL": "tiny-llama", "ENV": "guess", "NUM_TURNS": 1,
        "REFLECTION_TOKENS": 4, "EVAL_TASKS": 2, "SEED": 0}


def kernel_manager(tmp_path: pathlib.Path) -> AsyncKernelManager:
  """A kernel manager whose only kernelspec runs ``sys.executable``.

  A kernelspec named ``python3`` may resolve to another interpreter (a user
  or system install); this one is written for the interpreter running pytest.
  """
  kernels = tmp_path / "kernels"
  kernelspec.write_kernel_spec(kernels / KERNEL_NAME)
  spec = json.loads((kernels / KERNEL_NAME / "kernel.json").read_text())
  assert spec["argv"][0] == sys.executable
  return AsyncKernelManager(
      kernel_name=KERNEL_NAME,
      kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))


def parameterise(nb, values: dict) -> None:
  """Inserts a cell assigning ``values`` after the cell tagged ``parameters``."""
  tagged = [i for i, c in enumerate(nb.cells)
            if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
  cell = tagged[0]
  defined = {line.split("=")[0].strip() for line in nb.cells[cell].source.splitlines()
             if "=" in line and not line.startswith((" ", "#"))}
  unknown = sorted(set(values) - defined)
  assert not unknown, f"not parameters of the notebook: {unknown}"
  source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
  source += "\nimport sys\nprint('kernel:', sys.executable)"
  injected = nbformat.v4.new_code_cell(source)
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(cell + 1, injected)


def execute(name: str, values: dict, tmp_path: pathlib.Path, monkeypatch):
  """Runs colab/<name>.ipynb with ``values``; returns the executed notebook."""
  path = COLAB / f"{name}.ipynb"
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert all(not c.get("outputs") and c.get("execution_count") is None
             for c in nb.cells if c.cell_type == "code"), f"{path} is stored with outputs"
  parameterise(nb, values)
  # The kernel inherits this environment. Another test module may already
  # hold an accelerator in this process: the kernel must not preallocate.
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
  # Connection files and the IPython profile (startup scripts included) stay
  # out of the user's home.
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  client = nbclient.NotebookClient(
      nb, km=kernel_manager(tmp_path), timeout=TIMEOUT_S,
      resources={"metadata": {"path": str(REPO)}})
  t0 = time.perf_counter()
  client.execute(cleanup_kc=True)   # shut the kernel down, also on failure
  print(f"{name}.ipynb executed in {time.perf_counter() - t0:.1f} s")
  return nb


def text_of(cell) -> str:
  out = []
  for o in cell.get("outputs", []):
    if o.output_type == "stream":
      out.append(o.text)
    elif o.output_type in ("execute_result", "display_data"):
      out.append(o.data.get("text/plain", ""))
      out.append(o.data.get("text/markdown", ""))
  return "".join(out)


def cell_by_id(nb, cell_id: str):
  (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
  return cell


def inline_pngs(cell) -> list[bytes]:
  return [base64.b64decode(o.data["image/png"]) for o in cell.get("outputs", [])
          if o.output_type == "display_data" and "image/png" in o.data]


def check_png(path: pathlib.Path) -> None:
  assert path.is_file(), path
  assert path.read_bytes()[:8] == PNG_MAGIC, path


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines if line.strip()]


def check_common(nb) -> None:
  injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
  assert f"kernel: {sys.executable}" in text_of(injected[0])
  assert "nothing to install" in text_of(cell_by_id(nb, "install"))


@pytest.mark.slow
def test_quickstart_notebook(tmp_path, monkeypatch):
  workdir = tmp_path / "quickstart"
  nb = execute("quickstart", {**TINY, "NUM_ATTEMPTS": 2, "TRAIN_STEPS": 1,
                              "WORKDIR": str(workdir)}, tmp_path, monkeypatch)
  check_common(nb)
  assert "tiny-llama: 2 layers" in text_of(cell_by_id(nb, "model"))
  board = text_of(cell_by_id(nb, "sokoban-reset"))
  assert "Row 1: #" in board and "candidate actions" in board
  play = text_of(cell_by_id(nb, "sokoban-play"))
  assert "reward -0.1" in play and "return of the attempt" in play
  baselines = text_of(cell_by_id(nb, "configure"))
  assert baselines.count("| k | pass@k |") == 2
  assert "memory none" in baselines and "memory reflection_only" in baselines
  assert "| k | pass@k |" in text_of(cell_by_id(nb, "train"))
  assert "| k | zero-shot | Reflexion | LaMer after 1 step |" in text_of(cell_by_id(nb, "compare"))
  for cell_id in ("plot-curves", "plot-k"):
    (png,) = inline_pngs(cell_by_id(nb, cell_id))
    assert png[:8] == PNG_MAGIC
  for report in ("zero_shot.json", "reflexion.json"):
    metrics = json.loads((workdir / report).read_text())["metrics"]
    assert 0.0 <= metrics["pass@1"] <= metrics["pass@2"] <= 1.0
  run_dir = workdir / "lamer_guess_tiny-llama"
  records = read_metrics(run_dir)
  assert [r["step"] for r in records] == [1] and "eval/pass@2" in records[-1]
  check_png(workdir / "lamer_curves.png")
  check_png(workdir / "pass_at_k.png")


@pytest.mark.slow
def test_ablations_notebook(tmp_path, monkeypatch):
  workdir = tmp_path / "ablations"
  # Three runs: (0, history_only), (0.9, history_only) shared by both sweeps,
  # and (0.9, none).
  nb = execute("ablations", {**TINY, "NUM_TASKS": 1, "GROUP_SIZE": 2, "NUM_ATTEMPTS": 2,
                             "TRAIN_STEPS": 2, "EVAL_EVERY": 1, "GAMMAS": [0.0, 0.9],
                             "MEMORY_MODES": ["history_only", "none"],
                             "BASE_GAMMA": 0.9, "BASE_MEMORY": "history_only",
                             "WORKDIR": str(workdir)}, tmp_path, monkeypatch)
  check_common(nb)
  runs = sorted(p.name for p in workdir.iterdir() if p.is_dir())
  assert runs == ["gamma0.9_history_only", "gamma0.9_none", "gamma0_history_only"]
  for run in runs:
    records = read_metrics(workdir / run)
    assert [r["step"] for r in records] == [1, 2]
    assert all("eval/pass@2" in r for r in records)
  table = text_of(cell_by_id(nb, "table"))
  assert "| gamma_traj | memory | pass@1 | pass@2 |" in table
  assert "| 0.9 | none |" in table and "| 0 | history_only |" in table
  assert len(inline_pngs(cell_by_id(nb, "curves"))) == 2
  assert len(inline_pngs(cell_by_id(nb, "bars"))) == 1
  for png in ("gamma_traj_curves.png", "memory_curves.png", "final_pass_at_n.png"):
    check_png(workdir / png)
