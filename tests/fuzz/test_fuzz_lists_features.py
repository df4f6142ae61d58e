"""Fuzzing the MegaFace readers (matio feature files and trees, packed .npy features, template lists, noise
lists), the text lists (landmarks, LFW pairs), checkpoints and YAML configs: a result, or the documented error
naming the file (and the byte, line, entry or key where the format says so), within the fuzzkit bounds."""
import json

import numpy as np
import pytest
import torch
from fuzzkit import check_reader, mutated
from hypothesis import given
from hypothesis import strategies as st

from facerec.config import Config, load_config, save_config
from facerec.data.align import read_landmarks_file
from facerec.data.megaface import read_feature_tree, read_matio, read_noise_list, read_template_list, write_matio
from facerec.data.verification import read_pairs_txt
from facerec.eval.megaface_io import MatioTreeFeatures, PackedFeatures
from facerec.train.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint

LINE = r"line \d+"


def test_fuzz_matio(tmp_path, fuzz_settings):
    (tmp_path / "a").mkdir()
    path = tmp_path / "a" / "x.jpg_t.bin"
    write_matio(path, np.arange(8, dtype=np.float32))
    base = path.read_bytes()

    def read_all():
        one = read_matio(path)
        tree = read_feature_tree(tmp_path, ["a/x.jpg"], "_t.bin")
        blocks = MatioTreeFeatures(tmp_path, ["a/x.jpg"], "_t.bin")[0:1]
        return one, tree, blocks

    @fuzz_settings()
    @given(mutated(base, hot=[0, 4, 8, 12]))
    def run(data):
        path.write_bytes(data)
        out = check_reader("matio feature file", read_all, [path], where=r"byte \d+|header says|\d+ bytes")
        if out is not None:
            one, tree, blocks = out
            assert one.ndim == 2 and tree.shape[0] == 1 and blocks.shape[0] == 1

    run()


def test_fuzz_packed_npy(tmp_path, fuzz_settings):
    path = tmp_path / "f.npy"
    np.save(path, np.arange(40, dtype=np.float32).reshape(5, 8))
    base = path.read_bytes()

    @fuzz_settings()
    @given(mutated(base, hot=[6, 7, 8, 9, 10, 20, 40, 60]))
    def run(data):
        path.write_bytes(data)
        out = check_reader("packed .npy features", lambda: PackedFeatures(path).read_all(), [path])
        if out is not None:
            assert out.dtype == np.float32 and out.ndim == 2

    run()


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["path", "id", "x"]), c,
                                                                          max_size=3), max_leaves=10)


def test_fuzz_template_list(tmp_path, fuzz_settings):
    path = tmp_path / "list.json"
    base = json.dumps({"path": ["A/A_1.png", "B/B_2.png"], "id": ["A", "B"]}).encode()

    @fuzz_settings()
    @given(st.one_of(mutated(base), _json.map(lambda v: json.dumps(v).encode())))
    def run(data):
        path.write_bytes(data)
        out = check_reader("template list (JSON)", lambda: read_template_list(path), [path])
        if out is not None:
            paths, ids = out
            assert all(isinstance(p, str) and not p.startswith("/") for p in paths)
            assert ids is None or len(ids) == len(paths)

    run()


@pytest.mark.parametrize("reader", ["noise list", "landmarks", "pairs.txt"])
def test_fuzz_text_lists(tmp_path, fuzz_settings, reader):
    base, read = {
        "noise list": (b"# noises\nA_1.png\n000/u@N00/1_0.jpg\nx\tB/B_3.png\n", read_noise_list),
        "landmarks": (b"# path x1 y1 ...\na/1.png 38 51 73 51 56 71 41 92 70 92\nb.jpg\t1 2 3 4 5 6 7 8 9 10\n",
                      read_landmarks_file),
        "pairs.txt": (b"10\t300\nAbel\t1\t2\nAbel\t1\tBob\t4\nZoe 672. 3\n", read_pairs_txt),
    }[reader]
    path = tmp_path / "list.txt"

    @fuzz_settings(0.5)
    @given(st.one_of(mutated(base), st.binary(max_size=60)))
    def run(data):
        path.write_bytes(data)
        check_reader(reader, lambda: read(path), [path], where=LINE)

    run()


def test_fuzz_checkpoint(tmp_path, fuzz_settings):
    state = {"format_version": FORMAT_VERSION, "step": 3, "config": {"name": "t"}, "model": {"w": torch.ones(4)}}
    base = save_checkpoint(state, tmp_path / "run", 3, keep=1).read_bytes()
    path = tmp_path / "ckpt_00000003.pt"

    @fuzz_settings(0.25)
    @given(mutated(base, hot=list(range(0, 64, 4))))
    def run(data):
        path.write_bytes(data)
        out = check_reader("checkpoint (.pt)", lambda: load_checkpoint(path), [path])
        if out is not None:
            assert out["format_version"] == FORMAT_VERSION

    run()


def test_fuzz_yaml_config(tmp_path, fuzz_settings):
    save_config(Config(name="fuzz"), tmp_path / "base.yaml")
    base = (tmp_path / "base.yaml").read_bytes()
    path = tmp_path / "run.yaml"

    @fuzz_settings(0.1, shrink=False)
    @given(mutated(base))
    def run(data):
        path.write_bytes(data)
        check_reader("YAML config", lambda: load_config(path), [path], errors=(ValueError, TypeError))

    run()
