"""Synthetic dataset: byte-identical per seed, the real formats, ensure_synthetic caching, MegaFace tree."""
import hashlib
import json

import numpy as np
import pytest

from facerec.data import RecordDataset
from facerec.cli import synthetic as synthetic_cli
from facerec.data import synthetic
from facerec.data.megaface import read_noise_list, read_template_list
from facerec.data.synthetic import ensure_synthetic, generate
from facerec.data.verification import read_bin

TINY = dict(num_identities=4, images_per_identity=3, val_identities=3, val_images_per_identity=2, val_pairs=8,
            probe_identities=3, probe_images_per_identity=3, num_distractors=25)


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_byte_identical_for_one_seed(tmp_path):
    a, b = _digest(generate(tmp_path / "a", **TINY)), _digest(generate(tmp_path / "b", **TINY))
    assert a == b and len(a) > 40
    c = _digest(generate(tmp_path / "c", **{**TINY, "seed": 1}))
    assert c["train.rec"] != a["train.rec"] and c["synth_val.bin"] != a["synth_val.bin"]


def test_formats_and_layout(tmp_path):
    out = generate(tmp_path / "s", **TINY)
    ds = RecordDataset(out / "train.rec", train=True)
    assert (len(ds), ds.num_classes, ds.identity_key_range) == (12, 4, (13, 17))
    assert ds.scan_labels().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    img, _ = ds.read(0)
    assert img.shape == (112, 112, 3) and img.dtype == np.uint8 and img.std() > 10
    assert ds[5][0].shape == (3, 112, 112)
    images, issame = read_bin(out / "synth_val.bin")
    assert images.shape == (16, 112, 112, 3) and issame.sum() == 4
    # pair images differ (different renderings), even for positive pairs
    assert all(not np.array_equal(images[2 * k], images[2 * k + 1]) for k in range(8))

    mf = out / "megaface"
    paths, ids = read_template_list(mf / "templatelists" / "facescrub_features_list.json")
    assert len(paths) == 9 and len(set(ids)) == 3
    for p, name in zip(paths, ids):
        assert p.startswith(f"{name}/{name}_") and p.endswith(".png") and (mf / "facescrub_images" / p).is_file()
        assert " " not in name and "_" in name
    assert ids == sorted(ids, key=ids.index)  # grouped by identity
    full, none_ids = read_template_list(mf / "templatelists" / "megaface_features_list.json_25_1")
    small, _ = read_template_list(mf / "templatelists" / "megaface_features_list.json_10_1")
    assert none_ids is None and len(full) == 25 == len(set(full)) and len(small) == 10 and set(small) <= set(full)
    for p in full:
        aaa, user, fname = p.split("/")
        assert aaa == user[:3] and "@N" in user and fname.rsplit(".", 1)[0].split("_")[1].isdigit()
        assert (mf / "megaface_images" / p).is_file()
    fs_noise, mf_noise = read_noise_list(mf / "facescrub_noises.txt"), read_noise_list(mf / "megaface_noises.txt")
    assert len(fs_noise) >= 1 and set(fs_noise) <= {p.split("/")[1] for p in paths}
    assert len(mf_noise) >= 1 and set(mf_noise) <= set(full)
    assert (mf / "facescrub_noises.txt").read_text().startswith("#")


def test_ensure_synthetic_generates_once(tmp_path, monkeypatch):
    out = ensure_synthetic(tmp_path / "s", **{**TINY, "megaface": False})
    assert not (out / "megaface").exists()
    marker = json.loads((out / ".synthetic-complete.json").read_text())
    assert marker["params"]["num_identities"] == 4

    def fail(*a, **k):
        raise AssertionError("regenerated although the marker matches")

    monkeypatch.setattr(synthetic, "generate", fail)
    assert ensure_synthetic(tmp_path / "s", **{**TINY, "megaface": False}) == out
    with pytest.raises(AssertionError, match="regenerated"):
        ensure_synthetic(tmp_path / "s", **{**TINY, "megaface": False, "seed": 5})
    monkeypatch.undo()
    (out / ".synthetic-complete.json").unlink()  # an interrupted run leaves no marker -> regenerate
    assert ensure_synthetic(tmp_path / "s", **{**TINY, "megaface": False}) == out
    assert (out / ".synthetic-complete.json").is_file()


def test_bad_parameters(tmp_path):
    with pytest.raises(TypeError, match="unknown synthetic parameters \\['identities'\\]"):
        generate(tmp_path, identities=3)
    with pytest.raises(ValueError, match="val_identities must be >= 2"):
        generate(tmp_path, **{**TINY, "val_identities": 1})
    with pytest.raises(ValueError, match="jpeg_quality"):
        generate(tmp_path, **{**TINY, "jpeg_quality": (90, 10)})


def test_cli(tmp_path, capsys):
    args = [str(tmp_path / "cli"), "--num-identities", "2", "--images-per-identity", "2", "--val-identities", "2",
            "--val-images-per-identity", "2", "--val-pairs", "2", "--no-megaface"]
    assert synthetic_cli.main(args) == 0
    assert "synthetic dataset ready" in capsys.readouterr().out
    assert RecordDataset(tmp_path / "cli" / "train.rec").num_classes == 2


@pytest.mark.slow
def test_default_sizes(tmp_path):
    """The demo's default set: 300 x 20 train, 1,000 val pairs, 200 probes and 10,000 distractors."""
    out = generate(tmp_path / "d", progress=False)
    ds = RecordDataset(out / "train.rec")
    assert (len(ds), ds.num_classes) == (6000, 300)
    images, issame = read_bin(out / "synth_val.bin")
    assert images.shape == (2000, 112, 112, 3) and issame.sum() == 500
    lists = out / "megaface" / "templatelists"
    assert len(read_template_list(lists / "facescrub_features_list.json")[0]) == 200
    for size in (10, 100, 1000, 10000):
        assert len(read_template_list(lists / f"megaface_features_list.json_{size}_1")[0]) == size
