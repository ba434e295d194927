"""MkDocs hook: render the Sphinx markup of the package's docstrings on the API pages.

The docstrings are Google style, with Sphinx roles for cross-references (``:class:`~lightning_per.Score```) and
``Example::`` before a literal block, which Python's ``help()`` and IDEs read well. mkdocstrings renders the roles
as literal text; this hook turns each into a cross-reference that mkdocs-autorefs resolves when the object is
documented on the site (and leaves as plain code, without a warning, when it is not).
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:py:)?(?:class|mod|func|meth|attr|data|exc|obj):<code>(~?)([\w.]+)(\(\))?</code>")


def _reference(match: re.Match[str]) -> str:
    short, path = match.group(1), match.group(2)
    title = path.rsplit(".", 1)[-1] if short else path
    return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'


def on_page_content(html: str, **kwargs: Any) -> str:
    """Replace the roles by optional cross-references and ``Example::`` by a plain heading."""
    html = ROLE.sub(_reference, html)
    return html.replace("<p>Example::</p>", "<p><strong>Example:</strong></p>")
