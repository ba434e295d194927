"""Draw docs/figures/architecture.png, the layers of docs/architecture.md (read from its table).

Run ``python docs/figures/make_architecture.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent


def layers() -> list[list[str]]:
    """The units of each layer, bottom first."""
    rows = re.findall(r"^\| (\d+) \| (.+?) \|", (HERE.parent / "architecture.md").read_text(), re.M)
    return [[u.strip("` ").removeprefix("lightning_per.") for u in units.split(",")] for _, units in rows]


def main() -> None:
    """Draw the picture."""
    table = layers()
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(table) + 0.6))
    for level, units in enumerate(table):
        width = 8.6 / len(units)
        for i, unit in enumerate(units):
            x = 0.2 + i * width
            ax.add_patch(plt.Rectangle((x + 0.05, level + 0.1), width - 0.1, 0.8, color="#dbe7f3", ec="#3b6ea5"))
            ax.text(x + width / 2, level + 0.5, unit, ha="center", va="center", fontsize=9, family="monospace")
        ax.text(0.05, level + 0.5, str(level), ha="right", va="center", fontsize=9, color="#555")
    ax.annotate("", xy=(9.0, 0.2), xytext=(9.0, len(table) - 0.2), arrowprops={"arrowstyle": "->", "color": "#555"})
    ax.text(9.1, len(table) / 2, "imports go down", rotation=90, va="center", fontsize=9, color="#555")
    ax.set_xlim(-0.3, 9.4)
    ax.set_ylim(0, len(table))
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(HERE / "architecture.png", dpi=110)


if __name__ == "__main__":
    main()
