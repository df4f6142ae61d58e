"""The one way facerec's list readers read a text file: UTF-8, with an undecodable byte reported as a
ValueError naming the file, the line and the byte offset (instead of a bare UnicodeDecodeError)."""
from __future__ import annotations

import os

__all__ = ["read_text"]


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """Whole file as text. FileNotFoundError names ``what`` and the path; bad UTF-8 gives ValueError
    ``"<path>: line <n> (byte offset <k>): not UTF-8 text"``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}: line {line} (byte offset {err.start}): not UTF-8 text ({err.reason})") from None
