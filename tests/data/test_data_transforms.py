"""The one normalisation, flips and the 112x96 crop: values, shapes, numpy/torch agreement, bad input."""
import numpy as np
import pytest
import torch

from facerec.data.transforms import center_crop_112x96, crop_to_input_size, hflip, normalize, normalize_image


def test_normalize_values_and_layout():
    x = np.zeros((2, 4, 5, 3), np.uint8)
    x[0, 1, 2] = [0, 255, 51]
    x[1] = 128
    y = normalize(x)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 4, 5) and y.is_contiguous()
    assert y[0, :, 1, 2].tolist() == pytest.approx([-1.0, 1.0, (51 / 255 - 0.5) / 0.5])
    assert torch.allclose(y[1], torch.full((3, 4, 5), (128 / 255 - 0.5) / 0.5), atol=1e-6, rtol=0)
    assert torch.equal(normalize(torch.from_numpy(x)), y)
    assert torch.equal(normalize_image(x[0]), y[0])


@pytest.mark.parametrize("bad, err", [(np.zeros((2, 4, 4, 3), np.float32), TypeError),
                                      (np.zeros((4, 4, 3), np.uint8), ValueError),
                                      (np.zeros((1, 4, 4, 1), np.uint8), ValueError),
                                      ([[1, 2]], TypeError)])
def test_normalize_rejects_bad_input(bad, err):
    with pytest.raises(err):
        normalize(bad)


def test_hflip_and_crop_numpy_torch_agree():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    t = normalize(img)
    assert torch.equal(normalize(hflip(img)), hflip(t))
    assert np.array_equal(hflip(img)[0, 5, 0], img[0, 5, 111])
    assert torch.equal(normalize(center_crop_112x96(img)), center_crop_112x96(t))
    assert center_crop_112x96(img).shape == (2, 112, 96, 3)
    assert np.array_equal(center_crop_112x96(img)[0, :, 0], img[0, :, 8])
    assert crop_to_input_size(img[0], (112, 96)).shape == (112, 96, 3)
    first = img[0]
    assert crop_to_input_size(first, (112, 112)) is first
    with pytest.raises(ValueError, match="needs"):
        crop_to_input_size(img[0, :100], (112, 96))
    with pytest.raises(ValueError):
        center_crop_112x96(np.zeros((2, 100, 100, 3), np.uint8))


def test_per_image_path_is_bit_identical_for_every_value():
    values = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    flipped = values[:, ::-1]  # a strided view, as RecordDataset's flip passes it
    assert torch.equal(normalize_image(values), normalize(values[None])[0])
    assert torch.equal(normalize_image(flipped), normalize(np.ascontiguousarray(flipped)[None])[0])
    assert normalize_image(flipped).is_contiguous()
