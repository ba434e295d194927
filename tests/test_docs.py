"""The documentation site stays in step with the package: every public name has an API entry, every example resolves.

The site itself is built by `make docs` (`mkdocs build --strict`), not here.
"""

import importlib
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import torch

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


# ------------------------------------------------------------------ tutorials, how-to pages and their code
SNIPPET = re.compile(r'^\s*--8<--\s+"([^"]+)"\s*$', flags=re.MULTILINE)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
TUTORIALS = {  # example script -> its tutorial page, which includes the whole script
    "prioritized_sampling": "tutorials/own-model.md",
    "noisy_labels": "tutorials/noisy-labels.md",
    "long_tail": "tutorials/long-tail.md",
    "continual": "tutorials/continual.md",
    "ddp": "tutorials/ddp.md",
    "own_model": "tutorials/yaml.md",
    "streaming": "guide/streaming.md",
    "language_model": "guide/sequences.md",
}
HOW_TO = ["choose-a-method.md", "diagnostics.md", "troubleshooting.md", "migrating.md", "performance.md"]


def test_every_example_is_the_code_of_a_tutorial_page_in_the_nav():
    examples = sorted(p.stem for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
    assert examples == sorted(TUTORIALS)
    nav = (ROOT / "mkdocs.yml").read_text()
    for name, page in TUTORIALS.items():
        assert page in nav, page
        assert f'--8<-- "examples/{name}.py"' in (DOCS / page).read_text(), f"{page} must include examples/{name}.py"
    assert '--8<-- "examples/own_model.yaml"' in (DOCS / TUTORIALS["own_model"]).read_text()
    for page in HOW_TO:
        assert page in nav, page


def test_every_snippet_include_names_a_file_and_section_that_exist():
    for page in _pages():
        for target in SNIPPET.findall(page.read_text()):
            path, _, section = target.partition(":")
            assert (ROOT / path).is_file(), f"{page.name} includes {path}, which does not exist"
            if section:
                text = (ROOT / path).read_text()
                for mark in ("start", "end"):
                    assert f"--8<-- [{mark}:{section}]" in text, f"{page.name}: {path} has no [{mark}:{section}]"


def test_no_list_item_is_swallowed_by_an_indented_image_or_code_fence_before_it():
    # Markdown continues an indented image or a closing fence's paragraph into the next line: "- item" then renders
    # as text ("- ...") inside it, unless a blank line separates them
    swallowed = []
    for page in _pages():
        lines = page.read_text().splitlines()
        for number, (line, following) in enumerate(itertools.pairwise(lines), start=1):
            indented_end = line.startswith(" ") and line.strip().startswith(("![", "```"))
            if indented_end and following.lstrip().startswith("- "):
                swallowed.append(f"{page.relative_to(ROOT)}:{number + 1}")
    assert not swallowed, f"put a blank line before these list items: {swallowed}"


def test_every_figure_and_benchmark_json_the_docs_cite_exists():
    cited_json, images = set(), set()
    for page in _pages():
        text = page.read_text()
        cited_json |= set(re.findall(r"`(bench_out/[\w./-]+\.json)`", text))
        for src in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text):  # bench_out/ is served at the site's root
            images.add(ROOT / src if src.startswith("bench_out/") else (page.parent / src).resolve())
    assert len(cited_json) >= 8 and len(images) >= 3
    assert not [p for p in cited_json if not (ROOT / p).is_file()]
    assert not [p for p in images if not p.is_file()]


@pytest.fixture
def tutorial_names(tmp_path, monkeypatch):
    """What the how-to pages say they use: the end-to-end tutorial's modules and (tiny) datasets."""
    pytest.importorskip("mnist1d")
    tutorial = importlib.import_module("examples.prioritized_sampling")
    train_ds, val_ds = tutorial.make_data(200)
    monkeypatch.chdir(tmp_path)  # the Trainers' default logs land here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {
        "MyLightningModule": tutorial.MyLightningModule,
        "MyModel": tutorial.MyModel,
        "train_ds": train_ds,
        "val_ds": val_ds,
    }
    torch.set_num_threads(threads)


@pytest.mark.parametrize("page", HOW_TO)
def test_every_python_block_of_the_how_to_pages_runs(page, tutorial_names):
    blocks = PYTHON_BLOCK.findall((DOCS / page).read_text())
    namespace = dict(tutorial_names)
    for i, block in enumerate(blocks):
        if SNIPPET.search(block) or block.startswith("# not run"):
            continue  # included from an example (run by tests/test_examples.py), or a trap shown on purpose
        exec(compile(block, f"{page}, python block {i + 1}", "exec"), namespace)
