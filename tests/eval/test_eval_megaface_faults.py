"""A disk that fills up while MegaFace features are written: every file already written stays complete, no
partial or temporary file is left, the error says where a rerun resumes, and the rerun finishes the job
with results identical to an undisturbed run (only the unfinished chunks are recomputed)."""
import errno

import numpy as np
import pytest

from facerec.data import megaface as megaface_data
from facerec.data.megaface import read_matio_vector
from facerec.eval import megaface_extract
from facerec.eval.megaface_extract import extract_list

PATHS = [f"P_{k}/P_{k}_{j}.png" for k in range(3) for j in range(3)]  # 9 images, chunks of 4: 4 + 4 + 1


@pytest.fixture
def setup(tmp_path, write_images, counting_extractor):
    write_images(tmp_path / "img", PATHS)
    ext, calls = counting_extractor

    def run(out, fmt, **kw):
        return extract_list(ext, tmp_path / "img", PATHS, out, fmt=fmt, suffix="_t.bin", batch_size=4,
                            chunk_size=4, progress=False, **kw)

    run(tmp_path / "ref.npy", "npy")
    reference = np.load(tmp_path / "ref.npy")
    calls.clear()
    return tmp_path, run, calls, reference


def _leftovers(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name)


def test_disk_full_during_matio_feature_write(setup, monkeypatch, full_disk):
    tmp_path, run, calls, reference = setup
    out = tmp_path / "tree"
    monkeypatch.setattr(megaface_data, "open", full_disk(5 * 40 + 20), raising=False)  # 5 files of 40 bytes fit
    with pytest.raises(OSError, match=r"chunk 1 \(list entries 4\.\.7\).*1 finished chunks kept.*resume from "
                                      r"chunk 1") as info:
        run(out, "matio")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    written = [p for p in PATHS if (out / (p + "_t.bin")).is_file()]
    assert written == PATHS[:5] and _leftovers(tmp_path) == []
    for k, p in enumerate(written):  # each complete and right
        np.testing.assert_array_equal(read_matio_vector(out / (p + "_t.bin")), reference[k])
    calls.clear()
    run(out, "matio")
    assert sum(calls) == 2 * 5  # chunks 1 (4 images) and 2 (1 image), each with its mirror; chunk 0 kept
    tree = np.stack([read_matio_vector(out / (p + "_t.bin")) for p in PATHS])
    np.testing.assert_array_equal(tree, reference)


def test_disk_full_during_packed_part_write(setup, monkeypatch, full_disk):
    tmp_path, run, calls, reference = setup
    out = tmp_path / "f.npy"
    monkeypatch.setattr(megaface_extract, "open", full_disk(300), raising=False)  # part 0 (224 bytes) fits
    with pytest.raises(OSError, match=r"chunk 1 .*resume from chunk 1"):
        run(out, "npy")
    monkeypatch.undo()
    parts = out.with_name("f.npy.parts")
    assert sorted(p.name for p in parts.iterdir()) == ["chunk_0000000.npy"] and _leftovers(tmp_path) == []
    np.testing.assert_array_equal(np.load(parts / "chunk_0000000.npy"), reference[:4])
    assert not out.exists()
    calls.clear()
    run(out, "npy")
    assert sum(calls) == 2 * 5
    np.testing.assert_array_equal(np.load(out), reference)
    assert not parts.exists()


def test_disk_full_while_joining_parts(setup, monkeypatch, full_disk):
    tmp_path, run, calls, reference = setup
    out = tmp_path / "f.npy"
    monkeypatch.setattr(megaface_extract, "open", full_disk(700), raising=False)  # parts: 600 bytes, join: 344
    with pytest.raises(OSError, match=r"could not write .*f\.npy from its parts.*are kept"):
        run(out, "npy")
    monkeypatch.undo()
    assert not out.exists() and _leftovers(tmp_path) == []
    assert len(list(out.with_name("f.npy.parts").iterdir())) == 3
    calls.clear()
    run(out, "npy")
    assert calls == []  # every chunk was done: only the join is redone
    np.testing.assert_array_equal(np.load(out), reference)
