"""FeatureExtractor contract: ModelFeatureExtractor and extract_features (flip-sum, L2, batching)."""
import numpy as np
import pytest
import torch

from facerec.eval.features import ModelFeatureExtractor, extract_features, l2_normalize


class _Tiny(torch.nn.Module):
    """(N, 3, H, W) -> (N, 4): a fixed linear map of the mean-pooled left and right halves."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 4)
        self.seen = []

    def forward(self, x):
        self.seen.append((tuple(x.shape), float(x.min()), float(x.max()), self.training))
        w = x.shape[-1] // 2
        return self.proj(torch.cat([x[..., :w].mean((2, 3)), x[..., w:].mean((2, 3))], 1))


def _images(n, h=112, w=112, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_model_extractor_normalises_and_evals():
    torch.manual_seed(0)
    model = _Tiny().train()
    ext = ModelFeatureExtractor(model)
    imgs = _images(3)
    imgs[0] = 0
    imgs[1] = 255
    out = ext(imgs)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    shape, lo, hi, training = model.seen[-1]
    assert shape == (3, 3, 112, 112) and lo == -1.0 and hi == 1.0 and not training
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-6, atol=1e-6)


def test_model_extractor_crops_112x112_for_112x96_models_and_rejects_other_sizes():
    model = _Tiny()
    ext = ModelFeatureExtractor(model, input_size=(112, 96))
    imgs = _images(2)
    out = ext(imgs)
    assert model.seen[-1][0] == (2, 3, 112, 96)
    np.testing.assert_allclose(out, ext(np.ascontiguousarray(imgs[:, :, 8:104])), rtol=1e-6)
    with pytest.raises(ValueError, match="100x100"):
        ext(_images(1, 100, 100))


def test_extract_features_flip_sum_then_l2_and_batching():
    torch.manual_seed(1)
    ext = ModelFeatureExtractor(_Tiny())
    imgs = _images(5, seed=2)
    a = extract_features(ext, imgs, batch_size=2)
    ref = l2_normalize(ext(imgs) + ext(np.ascontiguousarray(imgs[:, :, ::-1])))
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    b = extract_features(ext, (imgs[i:i + 3] for i in range(0, 5, 3)), flip=True)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    raw = extract_features(ext, imgs, flip=False, normalize=False)
    np.testing.assert_allclose(raw, ext(imgs), rtol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        extract_features(ext, imgs.astype(np.float32))


def test_extract_features_accepts_plain_callables_returning_tensors():
    calls = []

    def ext(batch):
        calls.append(len(batch))
        return torch.from_numpy(batch.reshape(len(batch), -1)[:, :3].astype(np.float32) + 1)

    imgs = _images(4, 8, 8)
    out = extract_features(ext, imgs, batch_size=3, flip=False)
    assert calls == [3, 1] and out.shape == (4, 3)
    with pytest.raises(ValueError, match=r"\(N=2, D\)"):
        extract_features(lambda b: np.zeros((1, 3)), imgs[:2], flip=False)
