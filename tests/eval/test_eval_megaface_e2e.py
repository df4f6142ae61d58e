"""End to end on the synthetic MegaFace tree: checkpoint -> `extract` (matio and npy) -> `score` (refined)."""
import json

import pytest

import eval_megaface


@pytest.mark.slow
def test_synthetic_megaface_tree_extract_then_score(tmp_path, capsys):
    from facerec.config import Config, ModelConfig, config_to_dict
    from facerec.data.synthetic import generate
    from facerec.train.builders import build_backbone
    from facerec.train.checkpoint import FORMAT_VERSION, save_checkpoint

    generate(tmp_path / "syn", num_identities=2, images_per_identity=2, val_identities=2, val_images_per_identity=2,
             val_pairs=2, probe_identities=4, probe_images_per_identity=4, num_distractors=30)
    mf = tmp_path / "syn" / "megaface"
    cfg = Config(model=ModelConfig(name="mobilefacenet", input_size=(112, 112), embedding_size=32))
    model = build_backbone(cfg.model)
    ckpt = save_checkpoint({"format_version": FORMAT_VERSION, "model": model.state_dict(),
                            "config": config_to_dict(cfg), "step": 0}, tmp_path / "run", 0, keep=1)
    probe_list = mf / "templatelists" / "facescrub_features_list.json"
    d_list = mf / "templatelists" / "megaface_features_list.json_30_1"
    assert eval_megaface.main(["extract", "--checkpoint", str(ckpt), "--images", str(mf / "facescrub_images"),
                               "--list", str(probe_list), "--out", str(tmp_path / "feat" / "facescrub"),
                               "--batch-size", "8", "--workers", "0"]) == 0
    assert eval_megaface.main(["extract", "--checkpoint", str(ckpt), "--images", str(mf / "megaface_images"),
                               "--list", str(d_list), "--out", str(tmp_path / "feat" / "d30.npy"),
                               "--format", "npy", "--batch-size", "16", "--workers", "0"]) == 0
    assert eval_megaface.main(["score", "--probe-list", str(probe_list), "--distractor-list", str(d_list),
                               "--probe-features", str(tmp_path / "feat" / "facescrub"), "--feature-suffix",
                               "_facerec.bin", "--distractor-features", str(tmp_path / "feat" / "d30.npy"),
                               "--facescrub-noises", str(mf / "facescrub_noises.txt"), "--megaface-noises",
                               str(mf / "megaface_noises.txt"), "--out", str(tmp_path / "res"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "rank-1" in out and "@ 30 distractors" in out
    res = json.loads((tmp_path / "res" / "results.json").read_text())
    entry = res["results"][0]
    assert entry["num_trials"] == 4 * 4 * 3 and entry["feature_dim"] == 32 and entry["num_distractors"] == 30
    assert res["probe_noise"]["matched_images"] >= 1 and res["probe_noise"]["unmatched_entries"] == 0
    assert 0.0 <= entry["rank1"] <= 1.0 and entry["roc_probe_images"] == 16
    assert (tmp_path / "res" / "megaface_facerec.png").is_file()
