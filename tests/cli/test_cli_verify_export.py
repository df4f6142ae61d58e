"""facerec-verify and facerec-export on a tiny checkpoint: tables, JSON, error messages, exit codes."""
import json

import numpy as np
import pytest
import torch

from facerec.cli.export import main as export_main
from facerec.cli.verify import main as verify_main
from facerec.config import Config, ModelConfig, config_to_dict
from facerec.data.verification import write_bin
from facerec.eval.features import ModelFeatureExtractor
from facerec.eval.verification import evaluate_pairs
from facerec.models import build_backbone


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = Config(model=ModelConfig(name="mobilefacenet", input_size=(112, 96), embedding_size=32))
    torch.manual_seed(0)
    model = build_backbone(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt_00000001.pt"
    torch.save({"format_version": 1, "step": 1, "config": config_to_dict(cfg), "model": model.state_dict()}, path)
    return path


def _faces(n, size=112, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n // 4, size, size, 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, (n, size, size, 3))
    return np.clip(np.repeat(base, 4, axis=0).astype(int) + noise, 0, 255).astype(np.uint8)


def test_verify_prints_both_readings_and_writes_json_that_matches_the_library(ckpt, tmp_path, capsys):
    images = _faces(40)
    issame = np.arange(20) % 2 == 0  # pairs (2i, 2i+1): even pairs share a base image
    write_bin(tmp_path / "toy.bin", images, issame)
    out = tmp_path / "res" / "verify.json"
    assert verify_main(["--checkpoint", str(ckpt), "--bin", str(tmp_path / "toy.bin"), "--batch-size", "16",
                        "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| set | pairs | accuracy (flip) | accuracy (no flip) | threshold | TAR @ FAR=0.001 |" in text
    assert "| toy | 20 |" in text and "input 112x96" in text
    row = json.loads(out.read_text())["sets"][0]
    # the same number by hand: the model on centre-cropped images, no flip
    from facerec.models import load_backbone

    ext = ModelFeatureExtractor(load_backbone(ckpt), input_size=(112, 96))
    want = evaluate_pairs(ext(np.ascontiguousarray(images[:, :, 8:104])), issame)
    assert row["acc_noflip"] == pytest.approx(want.accuracy) and row["acc_noflip_std"] == pytest.approx(want.std)
    assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["tar_at_far"] <= 1.0 and row["image_size"] == [112, 112]


def test_verify_errors_name_the_file(ckpt, tmp_path, capsys):
    (tmp_path / "notes.bin").write_text("not a pickle")
    assert verify_main(["--checkpoint", str(ckpt), "--bin", str(tmp_path / "notes.bin")]) == 2
    assert "notes.bin" in capsys.readouterr().err
    write_bin(tmp_path / "small.bin", _faces(8, size=100), np.arange(4) % 2 == 0)
    assert verify_main(["--checkpoint", str(ckpt), "--bin", str(tmp_path / "small.bin"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "small.bin" in err and "100x100" in err and "112x96" in err
    assert verify_main(["--checkpoint", str(tmp_path / "nope.pt"), "--bin", str(tmp_path / "small.bin")]) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err


def test_export_cli_writes_and_checks(ckpt, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "m.onnx").is_file() and "(ok, tolerance 0.0001)" in text
    assert export_main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")]) == 2
