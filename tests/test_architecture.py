"""The package keeps the layers of docs/architecture.md: imports go down, never across a layer, never in a cycle."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_per"


def _layers() -> dict[str, int]:
    """Unit (module or package, dotted) -> layer, from the table of docs/architecture.md."""
    table = re.findall(r"^\| (\d+) \| (.+?) \|", (ROOT / "docs" / "architecture.md").read_text(), re.M)
    return {unit.strip("` "): int(layer) for layer, units in table for unit in units.split(",")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The ``lightning_per`` modules ``path`` imports at module level or inside functions.

    ``from lightning_per import functional`` imports the module ``functional``; ``from lightning_per import X`` of a
    public name imports the package's ``__init__`` (the top layer).
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("lightning_per"):
                submodules = {f"{base}.{alias.name}" for alias in node.names} & modules  # `from pkg import module`
                found |= submodules
                if len(submodules) < len(node.names):  # names defined in `base` itself
                    found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lightning_per"))
    return found


def _unit(module: str, layers: dict[str, int]) -> str:
    """The longest unit of the layer table that ``module`` belongs to."""
    candidates = [u for u in layers if module == u or module.startswith(u + ".")]
    assert candidates, f"{module} belongs to no layer of docs/architecture.md: add it to the table"
    return max(candidates, key=len)


def test_every_module_belongs_to_a_layer_and_imports_only_downward():
    layers, modules = _layers(), _modules()
    wrong = []
    for name, path in modules.items():
        unit = _unit(name, layers)
        for target in _imports(path, name, set(modules)):
            if target not in modules:
                continue  # a name imported from a module, not a module
            other = _unit(target, layers)
            if other != unit and layers[other] >= layers[unit]:
                wrong.append(f"{name} (layer {layers[unit]}) imports {target} (layer {layers[other]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {n: {t for t in _imports(p, n, set(modules)) if t in modules and t != n} for n, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1 and not nxt.startswith(node + "."):  # a package importing its own modules is fine
                cycle = [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_library_never_imports_the_examples_or_their_optional_packages():
    optional = ("mnist1d", "sklearn", "matplotlib", "lightning_per.examples")
    for name, path in _modules().items():
        if name.startswith("lightning_per.examples"):
            continue
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in imported if m.startswith(optional)}, f"{name} imports {imported}"


def test_no_library_file_is_over_350_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long


def test_no_benchmark_file_is_over_300_lines():
    files = (ROOT / "benchmarks").rglob("*.py")  # benchmarks/*.py and benchmarks/**/*.py
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 300}
    assert not long, long
