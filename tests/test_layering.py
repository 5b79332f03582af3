"""The package layering of docs/DESIGN.md, read from the source's imports.

Every import statement counts, at module level or inside a function (a lazy
import that dodges a circle is still a circle).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("envs_jax", "lamer_jax")


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Absolute names of the project modules ``path`` imports."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found.update(f"{node.module}.{a.name}" for a in node.names)
  return {n for n in found if n.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
  modules = {_module_name(p): p for pkg in PACKAGES
             for p in (REPO / pkg).rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    # "from lamer_jax.agent import layout" names a module; keep real modules.
    graph[name] = {m for m in _imports(path) if m in modules and m != name}
  return graph


GRAPH = _graph()


def test_the_graph_is_read():
  assert "lamer_jax.algos.lamer" in GRAPH
  assert "lamer_jax.agent.trial" in GRAPH["lamer_jax.algos.lamer"]


def test_no_import_circle():
  state: dict[str, int] = {}   # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(GRAPH[node]):
      if state.get(nxt) == 1:
        cycle = path[path.index(nxt):] + [nxt]
        pytest.fail("import circle: " + " -> ".join(cycle))
      if nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 2

  for node in sorted(GRAPH):
    if node not in state:
      visit(node, [node])


@pytest.mark.parametrize("module,forbidden", [
    ("lamer_jax.models", ("envs_jax", "lamer_jax.agent", "lamer_jax.algos")),
    ("lamer_jax.sharding", ("lamer_jax", "envs_jax")),
    ("envs_jax", ("lamer_jax",)),
    ("lamer_jax.agent", ("lamer_jax.algos",)),
])
def test_layers(module, forbidden):
  for name, deps in GRAPH.items():
    if name != module and not name.startswith(module + "."):
      continue
    bad = sorted(d for d in deps for f in forbidden
                 if d == f or d.startswith(f + "."))
    assert not bad, f"{name} imports {bad}"
