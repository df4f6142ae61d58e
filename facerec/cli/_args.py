"""What the console scripts share: the face-size argument type, a parser described by its library module, and
the one way a command reports a library error (``error: ...`` on stderr, an exit status, no traceback)."""
from __future__ import annotations

import argparse
import functools
import sys

from facerec._quote import quote

__all__ = ["FACE_SIZES", "library_parser", "parse_face_size", "reports_errors"]

FACE_SIZES = ((112, 112), (112, 96))  # the aligned crops the datasets and models take (H, W)


def parse_face_size(text: str) -> tuple[int, int]:
    """``"112x112"`` / ``"112x96"`` (``X`` also accepted) -> (H, W); anything else is an argparse error."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        h = w = None
    if (h, w) not in FACE_SIZES:
        raise argparse.ArgumentTypeError(f"size must be 112x112 or 112x96, got {quote(text)}")
    return h, w


def library_parser(prog: str, module) -> argparse.ArgumentParser:
    """An ArgumentParser for ``prog`` described by the first paragraph of ``module``'s docstring."""
    return argparse.ArgumentParser(prog=prog, description=module.__doc__.split("\n\n")[0])


def reports_errors(codes: dict):
    """Decorator for a ``main(argv) -> int``: an exception of a type in ``codes`` (type -> exit status) is
    printed as ``error: <message>`` on stderr and ``main`` returns its status."""
    types = tuple(codes)

    def wrap(main):
        @functools.wraps(main)
        def run(argv=None) -> int:
            try:
                return main(argv)
            except types as err:
                print(f"error: {err}", file=sys.stderr)
                return next(code for kind, code in codes.items() if isinstance(err, kind))
        return run
    return wrap
