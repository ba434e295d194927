"""MkDocs hook: the results page with its figures.

``docs/benchmarks.md`` includes ``benchmarks/README.md`` (generated from ``bench_out/``), whose figures are linked as
``../bench_out/<name>.png``, the path that works where the page itself lives. The hook inlines the page with those
links as ``bench_out/<name>.png`` and adds every PNG in ``bench_out/`` (and ``bench_out/gpu_check/``,
``bench_out/superseded/``) to the site under that path, where the other pages link them too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = re.compile(r'^--8<-- "benchmarks/README.md"\s*$', flags=re.MULTILINE)


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    """Serve the benchmark figures at ``bench_out/<name>.png``."""
    for png in sorted(
        png for folder in ("", "gpu_check/", "superseded/") for png in (ROOT / "bench_out").glob(f"{folder}*.png")
    ):
        path = png.relative_to(ROOT).as_posix()
        files.append(File(path, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Inline the results page into ``benchmarks.md`` with its figure links relative to the site page."""
    if not INCLUDE.search(markdown):
        return markdown
    text = (ROOT / "benchmarks" / "README.md").read_text().replace("](../bench_out/", "](bench_out/")
    return INCLUDE.sub(lambda _: text, markdown)
