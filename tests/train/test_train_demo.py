"""configs/demo.yaml end to end at toy size with the real parts: synthetic RecordIO set, DRConv-MobileFaceNet,
AM-Softmax, DataLoader worker, verification on the generated .bin, then load_backbone on the checkpoint.
Slow: about 20-40 s of CPU.
"""
from pathlib import Path

import pytest
import torch

from facerec.config import load_config
from facerec.train.checkpoint import load_backbone
from facerec.train.loop import train

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@pytest.mark.slow
def test_demo_config_trains_end_to_end_at_toy_size(tmp_path):
    cfg = load_config(DEMO, [
        f"data.path={tmp_path / 'synthetic'}", f"train.out_dir={tmp_path / 'run'}",
        "data.synthetic_options.num_identities=12", "data.synthetic_options.images_per_identity=4",
        "data.synthetic_options.val_identities=6", "data.synthetic_options.val_images_per_identity=2",
        "data.synthetic_options.val_pairs=20", "data.synthetic_options.megaface=false",
        "data.batch_size=8", "schedule.total_steps=4", "schedule.milestones=3", "schedule.warmup_steps=2",
        "eval.nfolds=2", "checkpoint.every=2", "train.log_every=2",
    ])
    summary = train(cfg)
    assert summary["step"] == 4 and not summary["interrupted"]
    assert 0.0 <= summary["metrics"]["synth_val_acc"] <= 1.0
    model = load_backbone(summary["checkpoint"])
    assert type(model).__name__ == "MobileFaceNet" and not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 112, 96)).shape == (2, 128)
