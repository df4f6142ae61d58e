"""The shipped backbones in data/pretrained/: each loads, embeds, carries its card, and (slow, with ../shared) scores
on real-faces-323 val/ what its card says."""
from pathlib import Path

import numpy as np
import pytest
import torch

from facerec.models import load_backbone

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "data" / "pretrained").glob("*.pt"))
CARD_KEYS = {"variant", "seed", "steps", "lr", "accuracy", "tar_far1e-3", "rank1", "final_loss"}


def test_every_variant_is_shipped():
    assert [p.stem for p in FILES] == ["condconv_mobilefacenet", "drconv_mobilefacenet", "local_mobilefacenet",
                                       "mobilefacenet"]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_pretrained_file_loads_and_embeds(path):
    stored = torch.load(path, map_location="cpu", weights_only=True)
    assert CARD_KEYS <= set(stored["card"]) and stored["card"]["variant"] == path.stem
    assert stored["config"]["model"]["name"] == path.stem
    model = load_backbone(path).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        emb = model(torch.randn(2, 3, 112, 96))
    assert emb.shape == (2, stored["config"]["model"].get("embedding_size", 128)) and torch.isfinite(emb).all()
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_pretrained_scores_match_the_card(path, shared_data, load_script):
    """Re-scored from the float16 file on val/, the card's figures hold (float16 rounding moves them a little)."""
    from facerec.eval.features import ModelFeatureExtractor, extract_features

    rf = load_script("benchmarks/real_faces.py")
    data = shared_data / "real-faces-323"
    if not (data / "val").is_dir():
        pytest.skip(f"{data / 'val'} is absent")
    from facerec.data.codec import decode_rgb
    from facerec.data.datasets import scan_image_folder

    paths, labels, _ = scan_image_folder(data / "val")
    images = np.stack([decode_rgb(p.read_bytes()) for p in paths])
    feats = extract_features(ModelFeatureExtractor(load_backbone(path), "cpu", rf.INPUT_SIZE), images, flip=True)
    got = rf.score(feats, np.asarray(labels, dtype=np.int64))
    card = torch.load(path, map_location="cpu", weights_only=True)["card"]
    for key in ("accuracy", "tar_far1e-3", "rank1"):
        assert got[key] == pytest.approx(card[key], abs=0.005), key
