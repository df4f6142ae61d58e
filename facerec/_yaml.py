"""Bounded YAML loading for config files and ``--set`` values (``docs/security.md``).

A file over ``MAX_CONFIG_BYTES`` is refused unread; a YAML document whose nodes, every alias expanded, exceed
``MAX_YAML_VALUES``, or that refers to itself, is refused before it is built (a few hundred bytes of nested
aliases can stand for billions of values). Errors are ValueErrors naming the source, quoting at most a few
hundred characters.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from facerec._quote import shorten

__all__ = ["MAX_CONFIG_BYTES", "MAX_YAML_VALUES", "load_yaml", "read_yaml_file"]

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; a larger one is refused before parsing
MAX_YAML_VALUES = 100_000  # YAML nodes in one document, every alias expanded (a whole resolved config: about 100)


class _ConfigYAMLError(yaml.YAMLError):
    """A YAML document refused before it is built: too many values with its aliases expanded, or a cycle."""


def _yaml_children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a node graph whose tree, every alias expanded, holds more than MAX_YAML_VALUES nodes (a few
    hundred bytes of nested aliases can stand for billions of values: every later walk over the built data,
    a merge, a copy, an error message, would pay for them all) or that refers to itself (a recursive alias)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:  # iterative depth-first walk, each distinct node once; sizes of shared nodes are reused
        node, leaving = stack.pop()
        key = id(node)
        if leaving:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _yaml_children(node))
            if sizes[key] > MAX_YAML_VALUES:
                raise _ConfigYAMLError(f"more than {MAX_YAML_VALUES:,} values once its aliases are expanded "
                                       f"(line {node.start_mark.line + 1}); a whole config holds about 100")
        elif key in on_path:
            raise _ConfigYAMLError(f"a recursive alias (line {node.start_mark.line + 1}) refers to a node "
                                   f"that contains it")
        elif key not in sizes:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _yaml_children(node) if id(child) not in sizes)


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that checks the composed document with ``_check_expanded_size`` before building it."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node


def load_yaml(text: str, where: str):
    """``yaml.safe_load(text)`` with the size bound of ``_BoundedLoader``; ValueError naming ``where``."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except _ConfigYAMLError as exc:
        raise ValueError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: invalid YAML: {shorten(str(exc))}") from None
    except RecursionError:
        raise ValueError(f"{where}: YAML nested too deeply") from None


def read_yaml_file(path: Path) -> dict:
    """A config file's top-level mapping; ValueError / TypeError naming the file (size, encoding, YAML)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {path}: larger than {MAX_CONFIG_BYTES:,} bytes; a config is a few hundred")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {path}: not UTF-8 text at byte {exc.start}: {exc.reason}") from exc
    data = load_yaml(text, f"config file {path}") or {}
    if not isinstance(data, Mapping):
        raise TypeError(f"config file {path}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data)
