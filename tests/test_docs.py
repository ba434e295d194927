"""The documentation site stays in step with the package: every public name has an API entry, every example resolves.

The site itself is built by `make docs` (`mkdocs build --strict`), not here.
"""

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

import lightning_per
import lightning_per.replay

pytest.importorskip("mkdocs")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", flags=re.MULTILINE)
YAML_BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _documented() -> set[str]:
    """The identifiers of every mkdocstrings directive (``::: lightning_per.X``) on the site."""
    return {name for page in _pages() for name in DIRECTIVE.findall(page.read_text())}


def _resolve(path: str) -> Any:
    """The object an import path names: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(path)


def _class_paths(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return found + [p for value in node.values() for p in _class_paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in _class_paths(value)]
    return []


def test_the_site_has_an_api_page_and_the_benchmark_page_includes_the_generated_results():
    assert (ROOT / "mkdocs.yml").exists() and (DOCS / "api").is_dir()
    assert '--8<-- "benchmarks/README.md"' in (DOCS / "benchmarks.md").read_text()


@pytest.mark.parametrize(
    ("package", "prefix"), [(lightning_per, "lightning_per"), (lightning_per.replay, "lightning_per.replay")]
)
def test_every_public_name_has_an_api_reference_entry(package, prefix):
    documented = _documented()
    missing = [name for name in package.__all__ if f"{prefix}.{name}" not in documented]
    assert not missing, f"add `::: {prefix}.<name>` to a page under docs/api/ for {missing}"


def test_every_api_reference_entry_names_an_importable_object():
    for name in sorted(_documented()):
        _resolve(name)  # raises for a name that was renamed or removed


def test_every_class_path_in_the_docs_yaml_examples_imports():
    paths = []
    for page in _pages():
        for block in YAML_BLOCK.findall(page.read_text()):
            paths += _class_paths(yaml.safe_load(block))
    assert len(paths) >= 10  # the guides' YAML examples were found
    for path in paths:
        assert callable(_resolve(path)), path
