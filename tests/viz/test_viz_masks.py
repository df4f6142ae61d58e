"""facerec.viz.masks and palette: hooks, layer selection, mask values and sizes, stats, overlays."""
import numpy as np
import pytest
import torch
from torch import nn

from facerec.viz import (PALETTE, PALETTE_HEX, capture_masks, find_mask_layers, mask_shapes, overlay_mask,
                         palette_rgb, region_areas, select_layers, upsample_nearest)

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]


class ToyDRConv(nn.Module):
    """A DRConv stand-in: owns a k x k ``guide`` conv with ``regions`` outputs."""

    def __init__(self, cin, cout, regions, kernel_size=1, stride=1):
        super().__init__()
        self.guide = nn.Conv2d(cin, regions, kernel_size, stride, kernel_size // 2)
        self.body = nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2)

    def forward(self, x):
        self.guide(x)
        return self.body(x)


class ToyBlock(nn.Module):
    """A block that owns one ``guide`` shared by its pointwise convs (as shared_guide bottlenecks)."""

    def __init__(self, channels, regions):
        super().__init__()
        self.guide = nn.Conv2d(channels, regions, 1)
        self.expand = nn.Conv2d(channels, channels, 1)
        self.project = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, x):
        self.guide(x)
        return self.project(torch.relu(self.expand(x)))


class ToyNet(nn.Module):
    def __init__(self, with_drconv=True):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, 2, 1)
        self.layer1 = ToyDRConv(6, 6, regions=4, kernel_size=3, stride=2) if with_drconv else nn.Conv2d(6, 6, 1)
        self.block = ToyBlock(6, regions=8) if with_drconv else nn.Conv2d(6, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.bn(self.block(self.layer1(torch.relu(self.stem(x)))))
        return self.fc(x.mean(dim=(2, 3)))



def _images(n=3, h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _norm(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def test_palette_okabe_ito_first_then_16_distinct():
    assert list(PALETTE_HEX[:8]) == OKABE_ITO
    assert len({tuple(c) for c in PALETTE.tolist()}) == 16
    assert palette_rgb(4).shape == (4, 3) and palette_rgb(4).dtype == np.uint8
    with pytest.raises(ValueError, match="1..16"):
        palette_rgb(17)


def test_find_layers_names_and_regions():
    layers = find_mask_layers(ToyNet())
    assert [(l.index, l.name, l.label, l.regions) for l in layers] == [
        (0, "layer1.guide", "layer1", 4), (1, "block.guide", "block", 8)]


def test_capture_sizes_values_and_argmax():
    torch.manual_seed(0)
    model = ToyNet()
    images = _images(5)
    masks = capture_masks(model, images, "all", batch_size=2, normalize=_norm)
    with torch.no_grad():
        x = _norm(images)
        f1 = model.layer1.guide(torch.relu(model.stem(x)))
        f2 = model.block.guide(model.layer1(torch.relu(model.stem(x))))
    assert list(masks) == ["layer1.guide", "block.guide"]
    for name, feature, m in (("layer1.guide", f1, 4), ("block.guide", f2, 8)):
        got = masks[name]
        assert got.shape == (5,) + tuple(feature.shape[2:])
        assert got.dtype == np.uint8 and got.min() >= 0 and got.max() < m
        np.testing.assert_array_equal(got, feature.argmax(dim=1).numpy())
    assert masks["layer1.guide"].shape[1:] == (8, 8) and masks["block.guide"].shape[1:] == (8, 8)
    assert len(np.unique(masks["block.guide"])) > 1


def test_ties_go_to_lowest_region():
    model = ToyNet()
    nn.init.zeros_(model.block.guide.weight)
    nn.init.zeros_(model.block.guide.bias)
    with torch.no_grad():
        model.block.guide.bias[3] = 1.0
        model.block.guide.bias[5] = 1.0
    masks = capture_masks(model, _images(2), "block", normalize=_norm)
    assert np.all(masks["block.guide"] == 3)


def test_hooks_removed_and_train_mode_restored():
    model = ToyNet().train()
    capture_masks(model, _images(2), normalize=_norm)
    assert model.training and model.bn.training
    assert all(not m._forward_hooks for m in model.modules())
    before = model.bn.running_mean.clone()
    capture_masks(model, _images(2), normalize=_norm)
    assert torch.equal(before, model.bn.running_mean), "capture must run in eval mode"


def test_select_layers_by_name_index_all():
    model = ToyNet()
    names = lambda spec: [l.name for l in select_layers(model, spec)]  # noqa: E731
    assert names("all") == ["layer1.guide", "block.guide"]
    assert names(0) == ["layer1.guide"] and names(-1) == ["block.guide"]
    assert names("block") == names("block.guide") == ["block.guide"]
    assert names("1,0,1") == ["block.guide", "layer1.guide"]
    assert names(["layer1", 1]) == ["layer1.guide", "block.guide"]
    with pytest.raises(ValueError, match="valid names: layer1, block"):
        select_layers(model, "stem")
    with pytest.raises(ValueError, match="out of range"):
        select_layers(model, 2)
    with pytest.raises(ValueError, match="empty"):
        select_layers(model, " , ")


def test_model_without_drconv_is_a_clear_error():
    with pytest.raises(ValueError, match="has no DRConv layer"):
        capture_masks(ToyNet(with_drconv=False), _images(1), normalize=_norm)
    with pytest.raises(TypeError, match="nn.Module"):
        find_mask_layers("drconv_mobilefacenet")


def test_bad_images_are_clear_errors():
    with pytest.raises(ValueError, match=r"uint8 RGB \(N, H, W, 3\)"):
        capture_masks(ToyNet(), np.zeros((2, 32, 32), np.uint8), normalize=_norm)
    with pytest.raises(ValueError, match="forward failed"):
        capture_masks(ToyNet(), torch.zeros(1, 3, 0, 32), normalize=_norm)


def test_mask_shapes_lists_resolutions():
    got = [(l.name, s) for l, s in mask_shapes(ToyNet(), (64, 48))]
    assert got == [("layer1.guide", (16, 12)), ("block.guide", (16, 12))]


def test_region_areas():
    masks = np.array([[[0, 0], [1, 3]], [[3, 3], [3, 3]]], dtype=np.uint8)
    stats = region_areas(masks, 4)
    assert stats["mask_size"] == [2, 2] and stats["regions"] == 4
    assert stats["area_fraction_per_image"] == [[0.5, 0.25, 0.0, 0.25], [0.0, 0.0, 0.0, 1.0]]
    assert stats["area_fraction_mean"] == [0.25, 0.125, 0.0, 0.625]
    assert stats["regions_used_per_image"] == [3, 1] and stats["unused_regions"] == [2]
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        region_areas(masks, 3)


def test_upsample_nearest_blocks():
    mask = np.arange(49, dtype=np.uint8).reshape(7, 7)
    up = upsample_nearest(mask, (112, 112))
    assert up.shape == (112, 112)
    np.testing.assert_array_equal(up, np.kron(mask, np.ones((16, 16), np.uint8)))
    np.testing.assert_array_equal(upsample_nearest(np.array([[1, 2]]), (2, 4)), [[1, 1, 2, 2], [1, 1, 2, 2]])


def test_overlay_uses_palette_colours():
    image = np.full((16, 16, 3), 100, np.uint8)
    mask = np.array([[0, 1], [2, 7]])
    bare = overlay_mask(image, mask, alpha=1.0)
    np.testing.assert_array_equal(bare[0, 0], PALETTE[0])
    np.testing.assert_array_equal(bare[15, 15], PALETTE[7])
    np.testing.assert_array_equal(bare[0, 8], PALETTE[1])
    half = overlay_mask(image, mask, alpha=0.5)
    np.testing.assert_array_equal(half[8, 0], np.rint(0.5 * 100 + 0.5 * PALETTE[2].astype(float)))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        overlay_mask(image, np.array([[16]]))


def test_partly_frozen_model_keeps_each_mode():
    model = ToyNet().train()
    model.bn.eval()
    capture_masks(model, _images(1), normalize=_norm)
    assert model.training and model.stem.training and not model.bn.training
