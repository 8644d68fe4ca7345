"""The package's layers: every module imports only from its own layer or below.

Layers, bottom to top (``docs/architecture.md``): ``core`` → ``pruning`` → ``models`` →
``data`` → ``synthesis`` → ``distill`` → ``pipeline`` → the public face
(``recoverprune/__init__.py``) → ``cli``. The checker parses every module (it imports
none of them) and reports:

- an import of a higher layer (also inside a function or a ``TYPE_CHECKING`` block);
- an import of ``experimental`` from anywhere but ``experimental/`` and ``cli/`` (the public
  face never lists an experiment);
- any import cycle among the package's modules, counting imports inside functions;
- an import of the package's own modules inside a function, outside ``cli/`` and the
  public face (the only places allowed to defer torch, for a fast ``--help``);
- a private name (leading underscore) imported from another module of the package;
- a function longer than 80 lines of code (docstring, blank and comment lines excluded).

The planted tests below show each rule failing on a small tree made to break it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "recoverprune"
LAYERS = (
    "core",
    "pruning",
    "models",
    "data",
    "evaluation",
    "synthesis",
    "distill",
    "pipeline",
    "experimental",
    "",
    "cli",
)
FACE = LAYERS.index("")
DEFER_OK = {FACE, LAYERS.index("cli")}
EXPERIMENTS = LAYERS.index("experimental")
MAX_LINES = 80


@dataclass
class Module:
    name: str
    path: Path
    layer: int
    imports: list[tuple[str, int, bool, list[str]]] = field(default_factory=list)
    """(imported module, line, inside a function, imported names)"""


def _module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(root: Path, path: Path) -> int:
    rel = path.relative_to(root).parts
    if rel == ("__main__.py",):  # `python -m recoverprune` is the command
        return LAYERS.index("cli")
    if len(rel) == 1:  # recoverprune/__init__.py
        return FACE
    if rel[0] not in LAYERS:
        raise AssertionError(f"{path}: sub-package {rel[0]!r} is in no layer; add it to LAYERS")
    return LAYERS.index(rel[0])


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _resolve(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".")
    if mod.path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _collect(mod: Module, tree: ast.AST, package: str) -> None:
    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for sub in child.body:
                    visit_import(sub, in_function=False)
                continue
            visit_import(child, in_function)
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, inner)

    def visit_import(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.ImportFrom):
            target = _resolve(mod, node)
            if target == package or target.startswith(package + "."):
                names = [a.name for a in node.names]
                mod.imports.append((target, node.lineno, in_function, names))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    mod.imports.append((alias.name, node.lineno, in_function, []))

    visit(tree, False)


def _long_functions(path: Path, tree: ast.AST, source: list[str]) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        skip: set[int] = set()
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skip = set(range(body[0].lineno, body[0].end_lineno + 1))
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        code = [
            i
            for i in range(first, node.end_lineno + 1)
            if i not in skip and source[i - 1].strip() and not source[i - 1].strip().startswith("#")
        ]
        if len(code) > MAX_LINES:
            out.append(f"{path}:{node.lineno}: {node.name} has {len(code)} lines of code")
    return out


def _owner(name: str, modules: dict[str, Module]) -> str | None:
    """The module an import of ``name`` reads (``pkg.mod`` or, for ``from pkg import mod``, itself)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def check_tree(root: Path) -> list[str]:
    """Every violation of the layer rules in the package at ``root`` (empty: none)."""
    package = root.name
    modules: dict[str, Module] = {}
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        mod = Module(_module_name(root, path), path, _layer(root, path))
        _collect(mod, tree, package)
        modules[mod.name] = mod
        problems += _long_functions(path.relative_to(root.parent), tree, source.splitlines())
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for mod in modules.values():
        where = mod.path.relative_to(root.parent)
        for target, line, in_function, names in mod.imports:
            targets = [_owner(target, modules)]
            for n in names:  # `from pkg.sub import module` reads that module
                if f"{target}.{n}" in modules:
                    targets.append(f"{target}.{n}")
            for t in {t for t in targets if t and t != mod.name}:
                graph[mod.name].add(t)
                if modules[t].layer > mod.layer:
                    problems.append(
                        f"{where}:{line}: {LAYERS[mod.layer] or 'the public face'} imports "
                        f"{t} from the higher layer {LAYERS[modules[t].layer] or 'public face'}"
                    )
                elif modules[t].layer == EXPERIMENTS and mod.layer == FACE:
                    problems.append(f"{where}:{line}: the public face imports experimental {t}")
            if in_function and mod.layer not in DEFER_OK:
                problems.append(f"{where}:{line}: function-level import of {target}")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                problems.append(f"{where}:{line}: imports private {', '.join(private)} of {target}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_the_package_keeps_its_layers():
    problems = check_tree(PACKAGE)
    assert not problems, "\n".join(problems)


def test_every_sub_package_is_a_layer():
    subs = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subs == {name for name in LAYERS if name}, subs


# -- the checker fails on planted violations -------------------------------------------
def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "recoverprune"
    for name in [*(f"{layer}/__init__.py" for layer in LAYERS if layer), "__init__.py"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


PLANTED = {
    "upward import": {
        "core/io.py": "from recoverprune.pipeline.compress import compress\n",
        "pipeline/compress.py": "def compress():\n    pass\n",
    },
    "cycle inside a layer": {
        "data/a.py": "from recoverprune.data.b import g\n\ndef f():\n    return g\n",
        "data/b.py": "def g():\n    from recoverprune.data.a import f\n    return f\n",
    },
}


def test_checker_fails_on_a_planted_upward_import(tmp_path):
    problems = check_tree(_plant(tmp_path, PLANTED["upward import"]))
    assert any("higher layer pipeline" in p and "core/io.py:1" in p for p in problems), problems


def test_checker_fails_on_the_public_face_importing_an_experiment(tmp_path):
    root = _plant(tmp_path, {"__init__.py": "from recoverprune.experimental import x\n"})
    problems = check_tree(root)
    expected = "recoverprune/__init__.py:1: the public face imports experimental recoverprune."
    assert problems == [expected + "experimental"], problems


def test_the_public_face_lists_no_experiment():
    import recoverprune

    lazy = recoverprune._WHERE  # the public names, from the face's one list of imports
    assert recoverprune.__all__ == ["__version__", *lazy] and "prune" in lazy
    assert not [m for m in lazy.values() if m.startswith("recoverprune.experimental")], lazy
    assert {"GeneratorConfig", "StreamConfig", "SyntheticStream"}.isdisjoint(lazy)


def test_checker_fails_on_a_planted_cycle_inside_a_layer(tmp_path):
    problems = check_tree(_plant(tmp_path, PLANTED["cycle inside a layer"]))
    assert "import cycle: recoverprune.data.a -> recoverprune.data.b" in problems, problems
    assert any("function-level import of recoverprune.data.a" in p for p in problems), problems


@pytest.mark.parametrize(
    "text, expected",
    [
        ("from recoverprune.core.b import _hidden\n", "imports private _hidden"),
        ("def f():\n" + "    x = 1\n" * 80 + "    return x\n", "f has 82 lines of code"),
    ],
    ids=["private-name", "long-function"],
)
def test_checker_fails_on_private_names_and_long_functions(tmp_path, text, expected):
    root = _plant(tmp_path, {"core/a.py": text, "core/b.py": "_hidden = 1\n"})
    assert any(expected in p for p in check_tree(root)), check_tree(root)


def test_deferred_imports_are_allowed_in_the_cli_and_the_public_face(tmp_path):
    root = _plant(
        tmp_path,
        {
            "cli/main.py": "def main():\n    from recoverprune.core.b import x\n    return x\n",
            "core/b.py": "x = 1\n",
            "__init__.py": "def __getattr__(name):\n    from recoverprune.core import b\n    return b\n",
        },
    )
    assert check_tree(root) == []


def test_a_docstring_does_not_count_towards_a_function_length(tmp_path):
    doc = '    """' + "\n" * 60 + '    """\n'
    root = _plant(
        tmp_path, {"core/a.py": "def f():\n" + doc + "    x = 1\n" * 70 + "    return x\n"}
    )
    assert check_tree(root) == []
