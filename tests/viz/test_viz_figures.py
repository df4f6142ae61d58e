"""facerec.viz.figures and inputs: Fig. 3 grid size and colours, PNG/PDF/SVG, .npy/JSON, image inputs."""
import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from facerec.viz import (PALETTE, capture_masks, compose_grid, figure_inches, find_mask_layers, fit_image,
                         grid_pixel_size, load_images, read_image_file, render_mask_figure)


class _Guided(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 4, 1)
        self.guide = nn.Conv2d(4, 4, 1)
        self.deep = nn.Sequential(nn.Conv2d(4, 4, 3, 2, 1))
        self.deep.guide = nn.Conv2d(4, 8, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        self.guide(x)
        x = self.deep[0](x)
        self.deep.guide(x)
        return x.mean(dim=(2, 3))



def _norm(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _faces(n=2, h=32, w=32):
    return np.random.default_rng(1).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_grid_pixel_size_and_palette_colours():
    images = _faces(3, 32, 24)
    masks = [np.random.default_rng(2).integers(0, 4, size=(3, 4, 3)), np.zeros((3, 2, 2), np.int64) + 7]
    grid = compose_grid(images, masks, alpha=1.0, scale=2, gap=3)
    assert grid.shape == grid_pixel_size(3, 2, (32, 24), 2, 3) + (3,) == (3 * 64 + 4 * 3, 3 * 48 + 4 * 3, 3)
    ch, cw = 64, 48
    first = grid[3:3 + ch, 3:3 + cw]
    np.testing.assert_array_equal(first, np.kron(images[0], np.ones((2, 2, 1), np.uint8)))
    cell = grid[3:3 + ch, 3 + cw + 3:3 + cw + 3 + cw]
    assert {tuple(p) for p in cell.reshape(-1, 3)} <= {tuple(c) for c in PALETTE[:4].tolist()}
    np.testing.assert_array_equal(cell[::16, ::16], PALETTE[masks[0][0]])
    last = grid[3 + 2 * (ch + 3):3 + 2 * (ch + 3) + ch, -3 - cw:-3]
    assert last.shape == (ch, cw, 3) and np.all(last == PALETTE[7])
    assert np.all(grid[:3] == 255) and np.all(grid[:, :3] == 255)


def test_render_writes_figures_masks_and_stats(tmp_path):
    torch.manual_seed(0)
    model = _Guided()
    images = _faces(2, 32, 32)
    out = render_mask_figure(model, images, tmp_path / "out", "all", "png,pdf,svg", dpi=50, alpha=0.5,
                             normalize=_norm, names=["a", "b"], notes=["a note"])
    for key in ("png", "pdf", "svg", "grid", "stats"):
        assert out[key].is_file() and out[key].stat().st_size > 0
    assert out["pdf"].read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in out["svg"].read_bytes()[:2000]
    png = cv2.imread(str(out["png"]))
    w_in, h_in = figure_inches(2, 2, (32, 32), 8)
    assert png.shape[:2] == (int(h_in * 50), int(w_in * 50))
    assert (h_in * 8).is_integer() and (w_in * 8).is_integer()
    assert cv2.imread(str(out["grid"])).shape[:2] == grid_pixel_size(2, 2, (32, 32))
    expected = capture_masks(model, images, normalize=_norm)
    assert set(out["masks"]) == {"guide", "deep.guide"}
    for name, path in out["masks"].items():
        np.testing.assert_array_equal(np.load(path), expected[name])
    stats = json.loads(out["stats"].read_text())
    assert stats["images"] == ["a", "b"] and stats["notes"] == ["a note"]
    assert [(s["name"], s["regions"], s["mask_size"]) for s in stats["layers"]] == [
        ("guide", 4, [8, 8]), ("deep.guide", 8, [4, 4])]
    for layer in stats["layers"]:
        assert abs(sum(layer["area_fraction_mean"]) - 1.0) < 1e-5
    assert [p["hex"] for p in stats["palette"]][:2] == ["#E69F00", "#56B4E9"] and len(stats["palette"]) == 8


def test_pdf_only_and_bad_format(tmp_path):
    out = render_mask_figure(_Guided(), _faces(1), tmp_path, [1], formats=["pdf"], normalize=_norm)
    assert out["pdf"].is_file() and "png" not in out and list(out["masks"]) == ["deep.guide"]
    with pytest.raises(ValueError, match="valid formats: png, pdf, svg"):
        render_mask_figure(_Guided(), _faces(1), tmp_path, formats="png,eps", normalize=_norm)


def test_figure_layout_is_deterministic_for_dpi():
    w1, h1 = figure_inches(4, 3, (112, 112), 8)
    w2, h2 = figure_inches(4, 3, (112, 96), 8)
    assert w2 < w1 and h2 == h1
    assert figure_inches(8, 3, (112, 112), 8)[1] > h1


def test_read_any_image_file(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, size=(112, 92), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "face.pgm"), grey)
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 2] = 200  # red in BGRA
    cv2.imwrite(str(tmp_path / "red.png"), rgba)
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((20, 30), 65535, np.uint16))
    got = read_image_file(tmp_path / "face.pgm")
    assert got.shape == (112, 92, 3) and np.array_equal(got[..., 0], grey) and np.array_equal(got[..., 2], grey)
    assert read_image_file(tmp_path / "red.png")[0, 0].tolist() == [200, 0, 0]
    assert read_image_file(tmp_path / "deep.png")[0, 0].tolist() == [255, 255, 255]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg: not a decodable image \(22 bytes\)"):
        read_image_file(tmp_path / "broken.jpg")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image_file(tmp_path / "missing.png")


def test_fit_image_keeps_aspect():
    image = np.zeros((112, 92, 3), np.uint8)
    image[:, :46] = 255
    out = fit_image(image, (112, 112))
    assert out.shape == (112, 112, 3)
    assert out[56, 50].tolist() == [255, 255, 255] and out[56, 62].tolist() == [0, 0, 0]
    assert fit_image(np.zeros((500, 300, 3), np.uint8), (112, 96)).shape == (112, 96, 3)


def test_load_images_from_folder_and_files(tmp_path):
    folder = tmp_path / "faces" / "s1"
    folder.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.pgm"), np.full((112, 92), 40 * i, np.uint8))
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((112, 112, 3), np.uint8))
    (folder / "readme.txt").write_text("not an image")
    got = load_images([tmp_path / "faces", tmp_path / "ok.png"], (112, 112), max_images=None)
    assert got.images.shape == (4, 112, 112, 3) and got.images.dtype == np.uint8
    assert got.names == ["faces/s1/0", "faces/s1/1", "faces/s1/2", "ok"]
    assert any("resized" in n and "3 images" in n for n in got.notes)
    assert len(load_images([tmp_path / "faces"], max_images=2).images) == 2
    with pytest.raises(ValueError, match="holds no image files"):
        load_images([tmp_path / "faces" / "empty"] if (tmp_path / "faces" / "empty").mkdir() is None else [])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_images([tmp_path / "nowhere"])


def test_more_regions_than_colours_capture_but_do_not_draw(tmp_path):
    model = _Guided()
    model.deep.guide = nn.Conv2d(4, 20, 1)
    masks = capture_masks(model, _faces(2), "deep", normalize=_norm)
    assert masks["deep.guide"].max() < 20 and masks["deep.guide"].shape == (2, 4, 4)
    with pytest.raises(ValueError, match="20 regions; the region palette has 16 colours"):
        render_mask_figure(model, _faces(2), tmp_path, "deep", normalize=_norm)
    assert find_mask_layers(model)[1].regions == 20
