"""MegaFace scoring from files: packed vs matio, noise lists, bad inputs, outputs, extraction, the CLI."""
import json

import numpy as np
import pytest

import eval_megaface
from facerec.data.megaface import (FeatureFileError, read_matio_vector, write_feature_tree, write_matio,
                                   write_noise_list, write_template_list)
from facerec.eval.megaface_extract import extract_list
from facerec.eval.megaface_io import PackedFeatures, match_noise, score_files


def _tiny_set(tmp_path, n_ids=4, per_id=3, n_d=40, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"Name_{k}" for k in range(n_ids)]
    paths = [f"{n}/{n}_{j}.png" for n in names for j in range(per_id)]
    ids = [n for n in names for _ in range(per_id)]
    centres = rng.standard_normal((n_ids, dim))
    probes = (np.repeat(centres, per_id, 0) + 0.6 * rng.standard_normal((len(paths), dim))).astype(np.float32)
    d_paths = [f"{100 + i % 7}/{100 + i % 7}{i}@N01/{i}_1.jpg" for i in range(n_d)]
    distractors = rng.standard_normal((n_d, dim)).astype(np.float32)
    write_template_list(tmp_path / "probes.json", paths, ids)
    write_template_list(tmp_path / "megaface_features_list.json_40_1", d_paths)
    return paths, ids, probes, d_paths, distractors


def test_packed_and_matio_inputs_give_identical_results(tmp_path):
    paths, ids, probes, d_paths, distractors = _tiny_set(tmp_path)
    write_feature_tree(tmp_path / "fs", paths, "_x.bin", probes)
    write_feature_tree(tmp_path / "mf", d_paths, "_x.bin", distractors)
    np.save(tmp_path / "p.npy", probes)
    np.save(tmp_path / "d.npy", distractors.astype(np.float64))  # float64 packed is read too
    write_noise_list(tmp_path / "fsn.txt", ["Name_1_2.png", "Nobody_9.png"])
    write_noise_list(tmp_path / "mfn.txt", [d_paths[3], "999/999x@N00/1_1.jpg", d_paths[3]])
    kw = dict(facescrub_noises=tmp_path / "fsn.txt", megaface_noises=tmp_path / "mfn.txt", plot=False)
    a = score_files(tmp_path / "probes.json", [tmp_path / "megaface_features_list.json_40_1"], tmp_path / "fs",
                    [tmp_path / "mf"], tmp_path / "out_a", feature_suffix="_x.bin", **kw)
    b = score_files(tmp_path / "probes.json", [tmp_path / "megaface_features_list.json_40_1"], tmp_path / "p.npy",
                    [tmp_path / "d.npy"], tmp_path / "out_b", **kw)
    ra, rb = a["results"][0], b["results"][0]
    for key in ("rank1", "cmc", "tar_at_far", "cmc_curve", "roc_curve", "rank_histogram"):
        assert ra[key] == rb[key], key
    assert a["probe_noise"] == {"entries": 2, "unique_entries": 2, "matched_images": 1, "unmatched_entries": 1}
    assert ra["distractor_noise"] == {"entries": 3, "unique_entries": 2, "matched_images": 1, "unmatched_entries": 1}
    assert ra["num_probes_replaced"] == 1 and ra["num_distractors_removed"] == 1
    assert ra["num_trials"] == 4 * 3 * 2 and ra["num_distractors"] == 40 and ra["feature_dim"] == 8
    saved = json.loads((tmp_path / "out_a" / "results.json").read_text())
    assert saved["results"][0]["rank1"] == ra["rank1"]
    cmc = json.loads((tmp_path / "out_a" / "cmc_facescrub_megaface_x_40_1.json").read_text())
    assert set(cmc) == {"cmc", "roc"} and cmc["cmc"][0][0] == 0 and cmc["cmc"][0][-1] == 40
    assert cmc["cmc"][1][0] == pytest.approx(ra["rank1"])


def test_missing_and_wrong_dimension_files_are_all_counted(tmp_path):
    paths, ids, probes, d_paths, distractors = _tiny_set(tmp_path)
    write_feature_tree(tmp_path / "fs", paths, "_x.bin", probes)
    write_feature_tree(tmp_path / "mf", d_paths, "_x.bin", distractors)
    (tmp_path / "mf" / (d_paths[5] + "_x.bin")).unlink()
    (tmp_path / "mf" / (d_paths[6] + "_x.bin")).unlink()
    write_matio(tmp_path / "mf" / (d_paths[9] + "_x.bin"), np.ones(7, np.float32))
    with pytest.raises(FeatureFileError) as info:
        score_files(tmp_path / "probes.json", [tmp_path / "megaface_features_list.json_40_1"], tmp_path / "fs",
                    [tmp_path / "mf"], tmp_path / "out", feature_suffix="_x.bin", plot=False)
    msg = str(info.value)
    assert "2 listed feature file(s) missing" in msg and d_paths[5] in msg
    assert "1 feature file(s)" in msg and d_paths[9] in msg


def test_packed_file_checks(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="has 5 rows but its list has 6"):
        PackedFeatures(tmp_path / "d.npy", expected_rows=6)
    np.save(tmp_path / "i.npy", np.zeros((5, 3), np.int32))
    with pytest.raises(ValueError, match="float32/float64"):
        PackedFeatures(tmp_path / "i.npy")
    raw = (tmp_path / "d.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match="truncated"):
        PackedFeatures(tmp_path / "t.npy")
    f = PackedFeatures(tmp_path / "d.npy")
    assert f[1:4].shape == (3, 3) and f[4:9].shape == (1, 3)


def test_noise_matching_ignores_extension_and_spaces():
    paths = ["Michael Landes/Michael Landes_43667.jpg", "A_B/A_B_1.png"]
    mask, rep = match_noise(paths, ["Michael_Landes_43667.png", "Z_9.png"], by_basename=True)
    assert mask.tolist() == [True, False] and rep["unmatched_entries"] == 1


def test_extract_list_matio_and_npy_agree_and_resume(tmp_path, write_images, counting_extractor):
    paths = [f"P_{k}/P_{k}_{j}.png" for k in range(3) for j in range(3)]
    write_images(tmp_path / "img", paths)
    ext, calls = counting_extractor

    extract_list(ext, tmp_path / "img", paths, tmp_path / "tree", fmt="matio", suffix="_t.bin", batch_size=4,
                 chunk_size=4, progress=False)
    extract_list(ext, tmp_path / "img", paths, tmp_path / "f.npy", fmt="npy", batch_size=4, chunk_size=4,
                 progress=False)
    packed = np.load(tmp_path / "f.npy")
    assert packed.shape == (9, 6) and not (tmp_path / "f.npy.parts").exists()
    tree = np.stack([read_matio_vector(tmp_path / "tree" / (p + "_t.bin")) for p in paths])
    np.testing.assert_array_equal(tree, packed)
    np.testing.assert_allclose(np.linalg.norm(packed, axis=1), 1, rtol=1e-5)
    n_calls = len(calls)
    (tmp_path / "tree" / (paths[8] + "_t.bin")).unlink()  # an interrupted run: only the last chunk is redone
    extract_list(ext, tmp_path / "img", paths, tmp_path / "tree", fmt="matio", suffix="_t.bin", batch_size=4,
                 chunk_size=4, progress=False)
    assert sum(calls[n_calls:]) == 2  # one image, plus its mirror
    with pytest.raises(FileNotFoundError, match="P_9"):
        extract_list(ext, tmp_path / "img", paths + ["P_9/P_9_0.png"], tmp_path / "tree2", chunk_size=4,
                     progress=False)


def test_cli_score_prints_one_line_per_list_and_writes_plot(tmp_path, capsys):
    paths, ids, probes, d_paths, distractors = _tiny_set(tmp_path)
    np.save(tmp_path / "p.npy", probes)
    np.save(tmp_path / "d.npy", distractors)
    write_template_list(tmp_path / "megaface_features_list.json_10_1", d_paths[:10])
    np.save(tmp_path / "d10.npy", distractors[:10])
    rc = eval_megaface.main(["score", "--probe-list", str(tmp_path / "probes.json"),
                             "--distractor-list", str(tmp_path / "megaface_features_list.json_40_1"),
                             "--distractor-list", str(tmp_path / "megaface_features_list.json_10_1"),
                             "--probe-features", str(tmp_path / "p.npy"), "--distractor-features",
                             str(tmp_path / "d.npy"), "--distractor-features", str(tmp_path / "d10.npy"),
                             "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "rank-1" in lines[0] and "@ 40 distractors" in lines[0]
    assert (tmp_path / "out" / "megaface_facerec.png").stat().st_size > 1000
    assert (tmp_path / "out" / "cmc_facescrub_megaface_facerec_10_1.json").is_file()
    rc = eval_megaface.main(["score", "--probe-list", str(tmp_path / "probes.json"), "--distractor-list",
                             str(tmp_path / "megaface_features_list.json_40_1"), "--probe-features",
                             str(tmp_path / "p.npy"), "--distractor-features", str(tmp_path / "d10.npy"),
                             "--out", str(tmp_path / "out2"), "--quiet"])
    assert rc == 2 and "has 10 rows but its list has 40" in capsys.readouterr().err
