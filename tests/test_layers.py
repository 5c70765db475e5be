"""The package's layers (the table in ``hf_tsprompt/__init__.py``'s docstring), enforced.

Every import of every module is read from its source (those inside functions and
``TYPE_CHECKING`` blocks included), resolved to the package's own modules, and checked: each
module is placed in exactly one layer; no import points to a later layer (an edge declared in
``EXCEPTIONS`` would be allowed, and must exist: there is none); the imports form no cycle;
and an import inside a function of one of the package's own modules is there for a reason
that this test can see: the imported module is heavy (it imports torch, transformers, peft,
... when loaded), or the importer is an entry point, which loads the lower layers only when a
command needs them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import hf_tsprompt

PACKAGE = Path(hf_tsprompt.__file__).parent
ROOT = "hf_tsprompt"
#: Declared upward edges (none: the package docstring says no import points up a layer).
EXCEPTIONS: set[tuple[str, str]] = set()
#: Third-party packages whose import costs seconds (or pulls a GPU runtime).
HEAVY = {"torch", "transformers", "peft", "trl", "datasets", "accelerate", "matplotlib"}
LAZY_IMPORTERS = {"cli", "__main__", ROOT}


def _name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or ROOT


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_table() -> dict[str, int]:
    """``{module: layer number}`` from the numbered list in the package docstring."""
    doc = hf_tsprompt.__doc__ or ""
    section = doc.split("Layers.", 1)[1]
    table: dict[str, int] = {}
    for number, body in re.findall(r"^(\d)\. \w+: (.+?)(?=^\d\. |^\s*$)", section, re.M | re.S):
        for module in re.split(r"[,\s]+", body.strip()):
            assert module not in table, f"{module} is listed twice in the layer table"
            table[module] = int(number)
    return table


def _imports(name: str) -> list[tuple[str, bool, int]]:
    """``(imported module, inside a function, line)`` for each import in module ``name``;
    package modules only for relative/``hf_tsprompt`` imports, top-level names otherwise."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == ROOT:
        package = []
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    out.append((_resolve(alias.name), inner, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                    module = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    module = _resolve(child.module or "")
                for alias in child.names:
                    sub = f"{module}.{alias.name}" if module else alias.name
                    out.append((sub if sub in MODULES else module or ROOT, inner, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return out


def _resolve(module: str) -> str:
    if module == ROOT:
        return ROOT
    if module.startswith(ROOT + "."):
        return module[len(ROOT) + 1 :]
    return "!" + module.split(".")[0]  # third party


def _edges() -> set[tuple[str, str]]:
    return {
        (name, target)
        for name in MODULES
        for target, _, _ in _imports(name)
        if not target.startswith("!") and target != name
    }


def _heavy() -> set[str]:
    """Package modules that load a heavy third-party package when imported (transitively)."""
    direct = {name: {t for t, inner, _ in _imports(name) if not inner} for name in MODULES}
    heavy = {n for n, ts in direct.items() if any(t[1:] in HEAVY for t in ts if t[0] == "!")}
    changed = True
    while changed:
        changed = False
        for n, ts in direct.items():
            if n not in heavy and ts & heavy:
                heavy.add(n)
                changed = True
    return heavy


def test_every_module_is_in_exactly_one_layer():
    table = layer_table()
    assert sorted(set(MODULES) - set(table)) == [], "place new modules in the layer table"
    assert sorted(set(table) - set(MODULES)) == [], "the layer table names missing modules"


def test_no_import_points_to_a_later_layer():
    table = layer_table()
    upward = sorted((a, b) for a, b in _edges() if table[b] > table[a] and (a, b) not in EXCEPTIONS)
    assert upward == []
    for a, b in EXCEPTIONS:  # a declared exception that no longer exists must go
        assert (a, b) in _edges(), f"{a} -> {b} is declared but no longer imported"


def test_imports_form_no_cycle():
    graph: dict[str, set[str]] = {n: set() for n in MODULES}
    for a, b in _edges():
        if b != ROOT:  # the root only re-exports; importing it for a name is caught above
            graph[a].add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            dfs(module)


def test_imports_inside_functions_have_a_reason():
    heavy = _heavy()
    unexplained = sorted(
        f"{name}:{line} imports {target}"
        for name in MODULES
        if name not in LAZY_IMPORTERS
        for target, inner, line in _imports(name)
        if inner
        and not target.startswith("!")
        and target != name
        and target not in heavy
        and (name, target) not in EXCEPTIONS
    )
    assert unexplained == [], "import these at the top of the module"


def test_the_checker_sees_what_it_must():
    """Known answers, so that a parser bug cannot make the tests above pass vacuously."""
    assert layer_table()["runs"] == 1 and layer_table()["cli"] == 7
    edges = _edges()
    assert ("cli", "pipeline") in edges  # a function-level import
    assert ("recipes", "runs") in edges  # a module-level relative import
    assert ("data", "data.tasks") in edges  # a package's relative import
    assert "trainer" in _heavy() and "errors" not in _heavy()


def test_every_module_declares_all_and_each_name_exists():
    import importlib

    main_tree = ast.parse(MODULES["__main__"].read_text(encoding="utf-8"))
    assert any(  # importing __main__ would run the CLI: read its __all__ instead
        isinstance(node, (ast.Assign, ast.AnnAssign)) and "__all__" in ast.dump(node)
        for node in main_tree.body
    )
    for name in sorted(set(MODULES) - {"__main__"}):
        module = importlib.import_module(ROOT if name == ROOT else f"{ROOT}.{name}")
        assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert missing == [], f"{name}.__all__ names what it lacks: {missing}"


def test_the_public_api_names_the_extension_points():
    api = set(hf_tsprompt.__all__)
    assert {
        "register_task",  # tasks
        "register_regularizer",  # regularisers
        "register_prompt_method",  # prompt methods
        "Recipe",
        "load_recipe",
        "train_from_recipe",
        "push_to_hub",
        "load_adapter",
        "MetricSource",  # the trainer-to-callback metric hand-over
    } <= api
    assert sorted(n for n in api if not hasattr(hf_tsprompt, n)) == []
