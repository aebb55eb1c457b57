"""The import boundaries: layers import strictly downward, with no circles.

    toolkit.contract (torch-free) <- toolkit (sim, envs, pql) <- robots <- export / deploy
    train/ joins robots and the trainer; deploy never imports torch.

Checked twice: statically, over every import statement of the project (module level and inside
functions: a lazy import that crosses a boundary is still a dependency), and by importing every
module of a package in a fresh interpreter and looking at what it pulled in (third-party
packages such as torch come in through other modules' imports).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("toolkit", "robots", "train", "export", "deploy", "benchmarks")

#: package (or module prefix) -> project packages it must never import.
FORBIDDEN = {
    "toolkit": {"robots", "train", "export", "deploy", "benchmarks"},
    "robots": {"train", "export", "deploy", "benchmarks"},
    "export": {"train", "deploy", "benchmarks"},
    "deploy": {"train", "export", "benchmarks"},
    "train": {"export", "deploy", "benchmarks"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``module`` imports, anywhere in its file."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_layers_import_strictly_downward():
    violations = []
    for module, imported in _graph().items():
        top = module.split(".")[0]
        for target in imported:
            if target.split(".")[0] in FORBIDDEN.get(top, ()):
                violations.append(f"{module} imports {target}")
        # The contract is the bottom layer: it imports nothing else of the project.
        if module.startswith("toolkit.contract"):
            violations += [f"{module} imports {t}" for t in imported
                           if not t.startswith("toolkit.contract") and t != "toolkit"]
    assert not violations, "\n".join(sorted(violations))


def test_there_are_no_import_circles():
    graph = _graph()
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import circles: {cycles}"


_PROBE = """
import importlib, json, pkgutil, sys
names = []
for package in {packages!r}:
    module = importlib.import_module(package)
    names += [package] + [m.name for m in pkgutil.walk_packages(module.__path__, package + ".")]
for name in names:
    if name.endswith("__main__"):
        continue
    importlib.import_module(name)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


@pytest.mark.parametrize(("packages", "forbidden"), [
    (("deploy",), {"torch", "train", "export"}),
    (("toolkit.contract",), {"torch", "mujoco", "robots", "deploy", "export", "train"}),
])
def test_importing_every_module_pulls_in_nothing_forbidden(packages, forbidden):
    result = subprocess.run([sys.executable, "-c", _PROBE.format(packages=packages)], cwd=REPO, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert not loaded & forbidden, f"importing {packages} loaded {sorted(loaded & forbidden)}"


def test_the_static_check_sees_real_imports():
    """The checker is not vacuous: it finds the imports that do exist."""
    graph = _graph()
    assert "toolkit.contract.task" in graph["robots.dclaw.turn"]
    assert "toolkit.pql.placement" in graph["toolkit.pql.ray_placement"]
    assert "robots" in graph["train.common"] and "toolkit.pql.trainer" in graph["train.common"]
    assert "toolkit.pql.ray_placement" in graph["toolkit.pql.trainer"]  # a lazy import inside a function


def test_robot_specs_and_tasks_import_without_torch():
    """A robot computer runs numpy + onnxruntime: the robot spec, the task's observation/reward
    code and the action mapping import without torch."""
    modules = ("robots.dclaw.turn", "robots.dclaw.spec", "robots.dclaw.pose", "robots.shadow_hand.reorient",
               "robots.shadow_hand.spec", "toolkit.contract.robot", "toolkit.contract.step")
    code = (f"import importlib, json, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
