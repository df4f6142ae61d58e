"""Checkpoints: atomic save, last K kept, truncated/foreign files, newest-valid lookup, load_backbone."""
import logging
import random

import numpy as np
import pytest
import torch

from facerec.config import Config, ModelConfig, config_to_dict
from facerec.train.builders import build_backbone
from facerec.train.checkpoint import (
    FORMAT_VERSION, capture_rng_state, find_resume_checkpoint, list_checkpoints, load_backbone,
    load_checkpoint, restore_rng_state, save_checkpoint,
)


def _state(step, model=None, cfg=None):
    cfg = cfg or Config()
    return {"format_version": FORMAT_VERSION, "step": step, "config": config_to_dict(cfg),
            "model": (model.state_dict() if model is not None else {"w": torch.full((2,), float(step))})}


def test_save_keeps_last_k_and_leaves_no_temporaries(tmp_path):
    for step in (2, 4, 6, 8):
        path = save_checkpoint(_state(step), tmp_path, step, keep=2)
        assert path.name == f"ckpt_{step:08d}.pt"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000006.pt", "ckpt_00000008.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000006.pt", "ckpt_00000008.pt"]
    assert load_checkpoint(tmp_path / "ckpt_00000008.pt")["model"]["w"].tolist() == [8.0, 8.0]


def test_truncated_and_foreign_files_raise_naming_the_file(tmp_path):
    path = save_checkpoint(_state(1), tmp_path, 1, keep=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ckpt_00000001\.pt.*truncated"):
        load_checkpoint(path)
    foreign = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match=r"other\.pt is not a facerec checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"other\.pt"):
        load_backbone(foreign)


def test_find_resume_skips_a_truncated_newest(tmp_path, caplog):
    save_checkpoint(_state(2), tmp_path, 2, keep=3)
    newest = save_checkpoint(_state(4), tmp_path, 4, keep=3)
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="facerec"):
        path, state = find_resume_checkpoint(tmp_path)
    assert path.name == "ckpt_00000002.pt" and state["step"] == 2
    assert "ckpt_00000004.pt" in caplog.text
    assert find_resume_checkpoint(tmp_path / "empty") is None


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == got[:2] and torch.equal(expected[2], got[2])


def test_load_backbone_rebuilds_the_stored_model(tmp_path):
    cfg = Config(model=ModelConfig(name="mobilefacenet", input_size=(112, 96), embedding_size=64))
    torch.manual_seed(0)
    model = build_backbone(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    path = save_checkpoint(_state(7, model, cfg), tmp_path, 7, keep=1)
    loaded = load_backbone(path)
    assert not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 3, 112, 96)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x))


def test_load_backbone_rejects_mismatched_weights(tmp_path):
    cfg = Config(model=ModelConfig(name="mobilefacenet", input_size=(112, 96)))
    path = save_checkpoint(_state(1, None, cfg), tmp_path, 1, keep=1)
    with pytest.raises(ValueError, match=r"do not fit model 'mobilefacenet'"):
        load_backbone(path)
