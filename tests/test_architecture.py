"""The house rules of the layout (docs/architecture.md), checked on the source itself.

A newcomer relies on them: the API process never loads worker code or LightFM, no
module imports itself back through others (imports inside functions included), no
source module grows past 400 lines, no function past 60 without saying why,
and ``shared/`` keeps its concerns in folders.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "worker", "shared")
MAX_MODULE_LINES = 400
MAX_LOOSE_SHARED_MODULES = 10
MAX_FUNCTION_LINES = 60
#: A longer function states why in a comment carrying this marker.
LONG_FUNCTION_MARK = "# long function:"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in known and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_api_imports_no_worker_code_statically() -> None:
    graph = _graph()
    reach: set[str] = set()
    todo = [m for m in graph if m == "api" or m.startswith("api.")]
    while todo:
        module = todo.pop()
        if module not in reach:
            reach.add(module)
            todo.extend(graph[module])
    assert not [m for m in reach if m.startswith("worker")]


def test_api_process_never_loads_worker_or_lightfm() -> None:
    code = (
        "import sys, api.app; app = api.app.create_app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'lightfm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_modules_stay_small() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_stay_short_or_say_why() -> None:
    long: list[str] = []
    for path in _modules().values():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                end = node.end_lineno or node.lineno
                body = lines[node.lineno - 1:end]
                if end - node.lineno + 1 > MAX_FUNCTION_LINES and not any(
                        LONG_FUNCTION_MARK in line for line in body):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without a reason: {long}"


def test_shared_keeps_concerns_in_folders() -> None:
    loose = [p.name for p in (ROOT / "shared").glob("*.py") if p.name != "__init__.py"]
    assert len(loose) <= MAX_LOOSE_SHARED_MODULES, sorted(loose)
    for package in (p for p in (ROOT / "shared").iterdir() if (p / "__init__.py").exists()):
        tree = ast.parse((package / "__init__.py").read_text())
        names = [n for n in tree.body if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", "") == "__all__" for t in n.targets)]
        assert names, f"{package.name}/__init__.py names no public API (__all__)"
        imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        assert not imports, f"{package.name}/__init__.py imports; subpackages import nothing"
