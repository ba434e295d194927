"""The run store: every finished run appended to a JSON-lines file, so a killed study resumes where it stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Missing(LookupError):
    """A run the store does not hold, asked for where nothing may train (``--summarize-only``)."""


def run_key(setting: str, method: str, seed: int, lr: float, budget: float) -> str:
    """The identity of a run: ``"large/0.3|prune|0|0.1|3000000"``."""
    return f"{setting}|{method}|{seed}|{lr:g}|{budget:.0f}"


def runs_path(out: Path) -> Path:
    """Where a study's runs are kept beside its JSON: ``bench_out/x.json`` -> ``bench_out/x.runs.jsonl``."""
    return out.with_suffix(".runs.jsonl")


class RunStore:
    """Finished runs by key, read from ``path`` at start and appended to it as each run ends (one JSON per line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # the last line of a run killed while writing it
                        continue
                    self.runs[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.runs

    def __len__(self) -> int:
        return len(self.runs)

    def get(self, key: str) -> dict[str, Any]:
        if key not in self.runs:
            raise Missing(key)
        return self.runs[key]

    def add(self, record: dict[str, Any]) -> None:
        """Keep ``record`` (it has its ``key``) and append it to the file at once."""
        self.runs[record["key"]] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab+") as f:
            f.seek(0, 2)
            if f.tell():  # a run killed while writing left a partial last line: start a new one
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
            else:
                torn = False
            f.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())
