"""What the layout promises, checked on the source: no import cycles between the product's modules (imports a
function makes at call time included: a cycle there is still two modules that need each other), the trainer
never imports the exporter (a training job must not pull in NVML and the samplers), the product never imports
a test helper (tests/, testkit/, bench/, scripts/: none is installed), those helpers find each other without
editing sys.path (they run as modules from the repository root), and the README stays a page a newcomer reads
(details live in docs/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the installed package name of each source folder (pyproject.toml's package-dir)
PACKAGE_DIRS = {"thermograd": ROOT / "thermograd", "thermograd.exporter": ROOT / "exporter",
                "thermograd.trainer": ROOT / "trainer", "thermograd.analysis": ROOT / "analysis"}
README_LIMIT_BYTES = 15_000
# the repository's own tools and test helpers: never imported by the product, never installed
HELPER_PACKAGES = {"tests", "testkit", "bench", "scripts", "conftest", "pytest"}
HELPER_DIRS = ("tests", "testkit", "bench", "scripts")


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The product modules `name` imports, anywhere in its body (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for target in targets:
            while target and target not in known:  # `from pkg import mod` names a module; `import a.b.c` its parents
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between modules (not counting a package's __init__ re-exporting its own modules)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):  # a package importing its own submodule is not a cycle
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles(graph: dict[str, set[str]]):
    cycle = _cycle({k: {v for v in vs if not k.startswith(v + ".")} for k, vs in graph.items()})
    assert cycle is None, " -> ".join(cycle)


def test_the_trainer_does_not_import_the_exporter(graph: dict[str, set[str]]):
    offenders = {m: sorted(i for i in imports if i.startswith("thermograd.exporter"))
                 for m, imports in graph.items() if m.startswith("thermograd.trainer")}
    assert not {m: i for m, i in offenders.items() if i}


def test_the_product_imports_no_test_helper():
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bad = [n for n in names if n.split(".")[0] in HELPER_PACKAGES]
                assert not bad, f"{path.relative_to(ROOT)} imports {bad} ({package})"


def test_helpers_and_tools_do_not_edit_sys_path():
    # Benches and scripts run as modules from the root (`python -m bench.bench_job`, `python -m scripts.demo`)
    # and pytest puts the root on the path, so `testkit.…`, `scripts.…` and `bench.…` import as they are.
    offenders = []
    for folder in HELPER_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(func := node.func, ast.Attribute)
                        and isinstance(func.value, ast.Attribute) and func.value.attr == "path"
                        and isinstance(func.value.value, ast.Name) and func.value.value.id == "sys"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} sys.path.{func.attr}")
    assert not offenders, offenders


def test_readme_is_a_page_not_a_manual():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size:,} bytes; move details to docs/"


def test_readme_links_resolve():
    import re

    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
