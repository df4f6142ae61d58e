"""Errors quote what they reject, bounded (``facerec._quote``): a huge value, line or YAML alias bomb gives an
error message of a few hundred characters, and loading such a config costs neither time nor memory."""
import argparse
import time

import numpy as np
import pytest

from facerec._quote import QUOTE_LIMIT, quote, shorten
from facerec._yaml import MAX_CONFIG_BYTES
from facerec.config import Config, apply_overrides, load_config

BOUND = 600  # characters an error message may take with a quoted value in it


def _nested(levels, width=10):
    value = ["x"] * width
    for _ in range(levels):
        value = [value] * width  # shared references, like YAML aliases: width**levels leaves, little memory
    return value


class _Str(str):
    pass


class _Dict(dict):
    pass


@pytest.mark.parametrize("value", [
    "x" * 10**7, b"y" * 10**6, list(range(10**6)), _nested(7), {i: "v" * 1000 for i in range(10**4)},
    _Str("s" * 10**6), _Dict({i: i for i in range(10**5)}), np.zeros((2000, 2000)), 10**4000 // 7,
], ids=["str", "bytes", "list", "aliases", "dict", "str-subclass", "dict-subclass", "array", "int"])
def test_quote_is_bounded(value):
    assert len(quote(value)) <= QUOTE_LIMIT


def test_quote_keeps_short_values_as_repr():
    for value in ("112x96", (112, 112), [1, 2], None, 0.5, {"a": 1}):
        assert quote(value) == repr(value)
    assert shorten("ok") == "ok" and len(shorten("z" * 10**6)) == 2 * QUOTE_LIMIT


def _alias_bomb(levels):
    """A config whose model.input_size expands through YAML aliases to 10**levels items (a few hundred bytes)."""
    lines = ["model:", "  options:", "    l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for k in range(1, levels):
        lines.append(f"    l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]")
    lines.append(f"  input_size: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_config_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(7))                       # ten million items in about 600 bytes
    assert path.stat().st_size < 700
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb\.yaml: more than 100,000 values once its aliases are expanded"):
        load_config(path)
    assert time.perf_counter() - t0 < 2.0
    path.write_text(_alias_bomb(12))                      # a trillion: still refused before anything is built
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert len(str(info.value)) < BOUND


def test_config_error_quotes_a_large_value_bounded(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(_alias_bomb(4))                       # 10,000 items: under the bound, but not a (H, W) pair
    with pytest.raises(TypeError, match=r"model\.input_size: expected a list of 2 items, got \[\[\[") as info:
        load_config(path)
    assert len(str(info.value)) < BOUND


def test_recursive_alias_and_oversized_file_are_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("model:\n  options: &o {again: [*o]}\n")
    with pytest.raises(ValueError, match="recursive alias"):
        load_config(path)
    path.write_text("name: x\n" + "#" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ValueError, match="larger than"):
        load_config(path)
    path.write_text("model: " + "[" * 5_000)
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert len(str(info.value)) < BOUND


@pytest.mark.parametrize("override", [
    "model.options.x=" + "[" * 5_000,
    "model.input_size=*" + "a" * 10**6,
    "model.name.x=" + "v" * 10**6,
    "k" * 10**6,
    "model." + "k" * 10**6 + "=1",
    "model.options.x=[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], "
    "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], "
    "&e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d], [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]]",
], ids=["deep", "undefined-alias", "not-a-section", "no-equals", "unknown-key", "alias-bomb"])
def test_override_errors_are_bounded(override):
    with pytest.raises((ValueError, TypeError)) as info:
        apply_overrides(Config(), [override])
    assert len(str(info.value)) < BOUND


def _library_rejections(tmp_path):
    """(name, call) pairs: library entry points handed one huge value each."""
    from facerec.cli._args import parse_face_size
    from facerec.data.align import align_folder
    from facerec.data.codec import encode_image
    from facerec.data.megaface import read_noise_list
    from facerec.data.recordio import IndexedRecordReader
    from facerec.models import create_head, create_model
    from facerec.train.schedule import lr_at
    from facerec.viz.palette import palette_rgb

    huge = "z" * 10**6
    (tmp_path / "noise.txt").write_text("a\t\t" + huge + "\n")
    (tmp_path / "t.rec").write_bytes(b"")
    (tmp_path / "t.idx").write_text(huge + "\n")
    rgb = np.zeros((4, 4, 3), np.uint8)
    return [
        ("create_model", lambda: create_model(huge)),
        ("create_head", lambda: create_head(huge, 128, 10)),
        ("create_head keywords", lambda: create_head("cosface", 128, 10, **{huge: 1})),
        ("lr_at", lambda: lr_at([0] * 10**6, Config().schedule, Config().optim)),
        ("encode_image", lambda: encode_image(rgb, huge)),
        ("align_folder", lambda: align_folder(tmp_path, tmp_path / "out", fallback=huge)),
        ("read_noise_list", lambda: read_noise_list(tmp_path / "noise.txt")),
        ("IndexedRecordReader", lambda: IndexedRecordReader(tmp_path / "t.rec", tmp_path / "t.idx")),
        ("palette_rgb", lambda: palette_rgb(list(range(10**6)))),
        ("parse_face_size", lambda: parse_face_size(huge)),
    ]


def test_library_errors_quote_huge_inputs_bounded(tmp_path):
    for name, call in _library_rejections(tmp_path):
        try:
            call()
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            assert len(str(err)) < BOUND, (name, len(str(err)))
        else:
            pytest.fail(f"{name} accepted a huge value")
