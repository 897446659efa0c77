"""A griffe extension for the API reference: ``#:`` comments above an attribute are its docstring.

labvault documents constants and attributes the way Sphinx's autodoc reads them::

    #: Several processes may write at once.
    multiprocess: ClassVar[bool] = True

griffe only knows docstrings written as a string after the assignment; this extension (loaded by
mkdocstrings through ``extensions:`` in mkdocs.yml) gives such an attribute the comment's text instead.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


class CommentDocstrings(griffe.Extension):
    """Read ``#:`` comment lines right above an attribute's assignment as its docstring."""

    def on_attribute_instance(self, *, node: ast.AST | griffe.ObjectNode, attr: griffe.Attribute,
                              agent: griffe.Visitor | griffe.Inspector, **kwargs: Any) -> None:
        if attr.docstring is not None or attr.lineno is None:
            return
        try:
            lines = attr.module.lines
        except (AttributeError, griffe.BuiltinModuleError):
            return
        comment: list[str] = []
        index = attr.lineno - 2  # the line above the assignment, 0-based
        while index >= 0 and lines[index].lstrip().startswith("#:"):
            comment.insert(0, lines[index].lstrip()[2:].removeprefix(" "))
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring("\n".join(comment), lineno=index + 2, parent=attr)
