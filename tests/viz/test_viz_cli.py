"""visualize_masks.py and the registry models: real DRConv-MobileFaceNet masks, checkpoints, clear errors."""
import json

import cv2
import numpy as np
import pytest
import torch

from facerec.models import create_model
from facerec.train.checkpoint import save_checkpoint
from facerec.viz import capture_masks, find_mask_layers, mask_shapes



@pytest.fixture
def cli_main(load_script):
    """``main`` of the checkout's visualize_masks.py (the script, not the console entry point)."""
    return load_script("visualize_masks.py").main


@pytest.fixture(scope="module")
def drconv():
    torch.manual_seed(0)
    return create_model("drconv_mobilefacenet").eval()


def _checkpoint(tmp_path, name, model):
    state = {"format_version": 1, "model": model.state_dict(), "step": 0,
             "config": {"name": "t", "model": {"name": name, "input_size": [112, 112]}}}
    return save_checkpoint(state, tmp_path / name, 0, keep=1)


def test_drconv_mobilefacenet_masks_have_layer_size_and_region_range(drconv):
    faces = np.random.default_rng(0).integers(0, 256, size=(1, 112, 112, 3), dtype=np.uint8)
    layers = find_mask_layers(drconv)
    masks = capture_masks(drconv, faces, "all")
    assert len(masks) == len(layers) >= 3
    for layer in layers:
        guide = layer.module
        assert guide.out_channels == layer.regions == 8
        mask = masks[layer.name]
        assert mask.shape[0] == 1 and 0 <= mask.min() and mask.max() < layer.regions
    assert [masks[layers[i].name].shape[1:] for i in (0, 6, -1)] == [(56, 56), (14, 14), (7, 7)]
    assert len(np.unique(masks[layers[0].name])) > 1


@pytest.mark.parametrize("name", ["mobilefacenet", "condconv_mobilefacenet"])
def test_models_without_drconv_error(name):
    with pytest.raises(ValueError, match="has no DRConv layer"):
        find_mask_layers(create_model(name))


def test_cli_list_layers(tmp_path, drconv, capsys, cli_main):
    ckpt = _checkpoint(tmp_path, "drconv_mobilefacenet", drconv)
    assert cli_main(["--checkpoint", str(ckpt), "--list-layers"]) == 0
    listing = capsys.readouterr().out.splitlines()
    shapes = [f"{h}x{w}" for _, (h, w) in mask_shapes(drconv, (112, 112))]
    rows = [line.split() for line in listing[2:]]
    assert [row[0] for row in rows] == [str(i) for i in range(len(shapes))]
    assert [row[2] for row in rows] == shapes and rows[0][3] == "stages.0.0.guide" and rows[0][1] == "8"


@pytest.mark.slow
def test_cli_figure_from_checkpoint(tmp_path, drconv, capsys, cli_main):
    ckpt = _checkpoint(tmp_path, "drconv_mobilefacenet", drconv)
    main = cli_main
    folder = tmp_path / "orl_like"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.pgm"), np.random.default_rng(i).integers(0, 256, (112, 92), dtype=np.uint8))
    out = tmp_path / "figs"
    rc = main(["--checkpoint", str(ckpt), "--images", str(folder), "--layers", "0,stages.4.1", "--out", str(out),
               "--format", "png,pdf", "--dpi", "40"])
    printed = capsys.readouterr().out
    assert rc == 0 and "resized" in printed
    assert (out / "figure.png").is_file() and (out / "figure.pdf").read_bytes()[:5] == b"%PDF-"
    stats = json.loads((out / "region_stats.json").read_text())
    assert [layer["mask_size"] for layer in stats["layers"]] == [[56, 56], [7, 7]]
    assert np.load(out / "masks" / "L14_stages.4.1.npy").shape == (2, 7, 7)


def test_cli_errors_name_the_problem(tmp_path, capsys, cli_main):
    main = cli_main
    plain = _checkpoint(tmp_path, "mobilefacenet", create_model("mobilefacenet"))
    assert main(["--checkpoint", str(plain), "--list-layers"]) == 2
    assert "without DRConv layers" in capsys.readouterr().err
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(plain.read_bytes()[:5000])
    assert main(["--checkpoint", str(truncated), "--list-layers"]) == 2
    assert "cut.pt" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    assert main(["--checkpoint", str(other), "--list-layers"]) == 2
    assert "other.pt is not a facerec checkpoint" in capsys.readouterr().err
    assert main(["--model", "mobilefacenet", "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "without DRConv layers" in capsys.readouterr().err
    assert main(["--model", "drconv_mobilefacenet", "--images", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "none" in capsys.readouterr().err
