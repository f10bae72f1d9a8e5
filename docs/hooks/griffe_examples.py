"""A griffe extension for the API pages: a docstring's `Example:` section is read as `Examples:`.

Google style makes `Example:` an admonition whose text is Markdown, so a doctest's output such as
`[('car', 0.99)]` would read as a link; `Examples:` renders doctest lines as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleAsExamples(griffe.Extension):
    """Rename each `Example:` section header to `Examples:` before the docstring is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
