"""SQL ``LIKE`` / ``ILIKE`` matched in time linear in the text (no backtracking regex over user text).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


#: A LIKE pattern longer than this is refused by the parser: matching costs at most
#: O(len(text) x len(longest '%'-free piece that holds a '_')), so the bound keeps every match linear in the
#: text (a 64 KiB value against the worst 1,024-character pattern: milliseconds).
MAX_LIKE_PATTERN_LENGTH = 1024


@dataclass(frozen=True)
class _LikePiece:
    """A '%'-free piece of a LIKE pattern: literal text with '_' (any one character) wildcards."""

    text: str  # the literal characters, with '_' positions holding a placeholder
    wild: bool  # whether the piece holds a '_'
    regex: re.Pattern[str] | None  # for pieces with '_': literals and '.', no quantifiers (no backtracking)

    def match_at(self, text: str, pos: int) -> bool:
        if self.regex is None:
            return text.startswith(self.text, pos)
        return self.regex.match(text, pos) is not None

    def find(self, text: str, pos: int) -> int:
        if self.regex is None:
            return text.find(self.text, pos)  # two-way search in CPython: linear
        found = self.regex.search(text, pos)  # each try is O(len(piece)): no quantifier to backtrack on
        return -1 if found is None else found.start()


def _like_piece(chars: list[str | None]) -> _LikePiece:
    wild = any(c is None for c in chars)
    text = "".join("\0" if c is None else c for c in chars)
    regex = None
    if wild:
        regex = re.compile("".join("." if c is None else re.escape(c) for c in chars), re.DOTALL)
    return _LikePiece(text, wild, regex)


@functools.lru_cache(maxsize=256)
def _like_program(pattern: str) -> tuple[_LikePiece, ...]:
    """Split a LIKE pattern at its unescaped '%' into pieces (a pattern without '%' is one piece)."""
    pieces: list[_LikePiece] = []
    chars: list[str | None] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            chars.append(pattern[i + 1])
            i += 2
            continue
        if ch == "%":
            pieces.append(_like_piece(chars))
            chars = []
        else:
            chars.append(None if ch == "_" else ch)
        i += 1
    pieces.append(_like_piece(chars))
    return tuple(pieces)


def _like(text: str, pattern: str, case_insensitive: bool) -> bool:
    """SQL ``LIKE`` in time linear in ``text``: no backtracking regex over user text (ReDoS-safe).

    The pattern ``P0 % P1 % ... % Pk`` matches when ``P0`` matches at the start, ``Pk`` at the end, and
    ``P1 .. Pk-1`` in order in between; taking each middle piece at its leftmost place is always right
    (a later place only leaves less room for the rest), so one forward scan decides it.
    """
    if case_insensitive:  # ASCII-only folding, like SQLite's lower()
        text, pattern = text.translate(_ASCII_LOWER), pattern.translate(_ASCII_LOWER)
    pieces = _like_program(pattern)
    first = pieces[0]
    if len(pieces) == 1:
        return len(text) == len(first.text) and first.match_at(text, 0)
    if not first.match_at(text, 0):
        return False
    pos = len(first.text)
    last = pieces[-1]
    end = len(text) - len(last.text)
    for piece in pieces[1:-1]:
        if not piece.text:
            continue
        found = piece.find(text, pos)
        if found < 0 or found + len(piece.text) > end:
            return False
        pos = found + len(piece.text)
    return end >= pos and last.match_at(text, end)
