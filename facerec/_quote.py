"""Bounded quoting of rejected input in error messages: ``quote(value)``, ``shorten(text)``.

An error names what it rejects (the value, the line, the key), but never all of it: a config value that YAML
aliases expand to millions of items, or a megabyte line of a list file, would otherwise become an error
message of that size. ``quote`` is ``repr`` with every container cut after a few items, nesting after a few
levels and the result after :data:`QUOTE_LIMIT` characters (``reprlib``); it never builds the full ``repr``
of a container first. Imports nothing from facerec, so every part of the library can use it.
"""
from __future__ import annotations

import reprlib

__all__ = ["QUOTE_LIMIT", "quote", "shorten"]

QUOTE_LIMIT = 200  # characters of a quoted value in an error message


class _BoundedRepr(reprlib.Repr):
    """reprlib.Repr that also cuts subclasses of the builtin containers and strings (reprlib dispatches on the
    exact type name, so a dict or str subclass would otherwise get its full builtin repr)."""

    _BASES = (str, bytes, list, tuple, dict, set, frozenset)

    def repr1(self, x, level):
        for base in self._BASES:
            if isinstance(x, base) and type(x) is not base:
                return getattr(self, f"repr_{base.__name__}")(x, level)
        return super().repr1(x, level)

    def repr_bytes(self, x, level):
        text = repr(x[: self.maxstring + 1])
        return text if len(x) <= self.maxstring else text[: self.maxstring] + "..."


_REPR = _BoundedRepr()
_REPR.maxlevel = 3
_REPR.maxstring = QUOTE_LIMIT // 2
_REPR.maxother = QUOTE_LIMIT // 2
_REPR.maxlong = 60
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_REPR, _name, 8)


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` of at most ``limit`` characters (containers, strings and long numbers shortened with
    ``...``), for quoting input back in an error message."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that fails (e.g. an int past Python's digit limit) still gets a message
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten(text: str, limit: int = 2 * QUOTE_LIMIT) -> str:
    """``text`` (a message that may carry input, e.g. a parser's or torch's) cut to ``limit`` characters."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
