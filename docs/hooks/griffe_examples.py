"""Griffe extension: read a docstring's ``Example:`` section as Google style's ``Examples:`` section.

The package's docstrings end with ``Example:`` followed by doctests, which pytest runs. Griffe's Google parser knows
the section only as ``Examples:`` and would render ``Example:`` as an admonition whose ``>>>`` lines become nested
block quotes; renamed, the doctests render as Python console code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

TITLE = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename every ``Example:`` section title to ``Examples:`` before the docstring is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each object as it is loaded."""
        if obj.docstring is not None:
            obj.docstring.value = TITLE.sub(r"\1Examples:", obj.docstring.value)
