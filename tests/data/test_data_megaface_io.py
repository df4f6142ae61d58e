"""MegaFace devkit file I/O: template lists, matio feature files, noise lists, feature trees."""
import json
import struct

import numpy as np
import pytest

from facerec.data.megaface import (FeatureFileError, read_feature_tree, read_matio, read_matio_vector,
                                   read_noise_list, read_template_list, write_feature_tree, write_matio,
                                   write_noise_list, write_template_list)


def test_matio_round_trip_vector_and_matrix(tmp_path):
    v = np.arange(7, dtype=np.float32) / 3
    write_matio(tmp_path / "v.bin", v)
    raw = (tmp_path / "v.bin").read_bytes()
    assert struct.unpack("<iiii", raw[:16]) == (7, 1, 4, 5)
    assert len(raw) == 16 + 7 * 4
    np.testing.assert_array_equal(read_matio(tmp_path / "v.bin"), v.reshape(7, 1))
    np.testing.assert_array_equal(read_matio_vector(tmp_path / "v.bin"), v)
    m = np.random.default_rng(0).standard_normal((3, 5))  # float64 -> type 6
    write_matio(tmp_path / "m.bin", m)
    assert struct.unpack("<iiii", (tmp_path / "m.bin").read_bytes()[:16]) == (3, 5, 40, 6)
    np.testing.assert_array_equal(read_matio(tmp_path / "m.bin"), m)


def test_matio_512d_file_is_2064_bytes(tmp_path):
    write_matio(tmp_path / "f.bin", np.ones(512, np.float32))
    assert (tmp_path / "f.bin").stat().st_size == 2064


def test_matio_bad_files_name_file_and_offset(tmp_path):
    p = tmp_path / "bad.bin"
    p.write_bytes(struct.pack("<iiii", 4, 1, 4, 9) + b"\0" * 16)
    with pytest.raises(ValueError, match=r"bad.bin: byte 12"):
        read_matio(p)
    p.write_bytes(struct.pack("<iiii", 4, 1, 8, 5) + b"\0" * 16)
    with pytest.raises(ValueError, match=r"byte 8"):
        read_matio(p)
    p.write_bytes(struct.pack("<iiii", 4, 1, 4, 5) + b"\0" * 12)
    with pytest.raises(ValueError, match=r"has 28 bytes"):
        read_matio(p)
    p.write_bytes(b"\0" * 5)
    with pytest.raises(ValueError, match=r"shorter than its 16-byte header"):
        read_matio(p)


def test_template_list_round_trip_and_errors(tmp_path):
    write_template_list(tmp_path / "p.json", ["a/a_1.png", "a/a_2.png"], ["a", "a"])
    assert read_template_list(tmp_path / "p.json") == (["a/a_1.png", "a/a_2.png"], ["a", "a"])
    write_template_list(tmp_path / "d.json", ["x/y/1_1.jpg"])
    assert json.loads((tmp_path / "d.json").read_text()) == {"path": ["x/y/1_1.jpg"]}
    assert read_template_list(tmp_path / "d.json") == (["x/y/1_1.jpg"], None)
    with pytest.raises(ValueError, match="must match"):
        write_template_list(tmp_path / "e.json", ["a"], ["a", "b"])
    (tmp_path / "bad.json").write_text('{"id": []}')
    with pytest.raises(ValueError, match="bad.json"):
        read_template_list(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text('{"path": ["a", "b"], "id": ["a"]}')
    with pytest.raises(ValueError, match="bad2.json"):
        read_template_list(tmp_path / "bad2.json")


def test_noise_list_comment_and_tab_lines(tmp_path):
    write_noise_list(tmp_path / "n.txt", ["A_1.png", "B_2.png"], comment="facescrub noises")
    assert (tmp_path / "n.txt").read_text().startswith("# facescrub noises\n")
    assert read_noise_list(tmp_path / "n.txt") == ["A_1.png", "B_2.png"]
    (tmp_path / "m.txt").write_text("# megaface noises\nid1\t534/user/1_1.jpg\n\n534/user/2_1.jpg\n")
    assert read_noise_list(tmp_path / "m.txt") == ["534/user/1_1.jpg", "534/user/2_1.jpg"]


def test_feature_tree_round_trip_and_all_errors_counted(tmp_path):
    paths = ["a/a_1.png", "a/a_2.png", "b/b_1.png"]
    feats = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    write_feature_tree(tmp_path, paths, "_x.bin", feats)
    assert (tmp_path / "a" / "a_1.png_x.bin").is_file()
    np.testing.assert_array_equal(read_feature_tree(tmp_path, paths, "_x.bin"), feats)
    write_matio(tmp_path / "a" / "a_2.png_x.bin", np.ones(5, np.float32))
    with pytest.raises(FeatureFileError) as info:
        read_feature_tree(tmp_path, paths + ["c/c_1.png", "c/c_2.png"], "_x.bin")
    err = info.value
    assert len(err.missing) == 2 and len(err.wrong) == 1
    assert "a_2.png_x.bin" in err.wrong[0][0] and "dimension 5, expected 6" in err.wrong[0][1]
    assert "2 listed feature file(s) missing" in str(err) and "1 feature file(s)" in str(err)
    with pytest.raises(FeatureFileError):
        read_feature_tree(tmp_path, paths[:1], "_x.bin", dim=4)
