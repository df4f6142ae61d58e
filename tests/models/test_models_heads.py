"""Margin heads: hand-computed logits, fp32 under autocast, factory and errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from facerec.models import AMSoftmax, ArcFace, CosFace, create_head, list_heads


def _tiny_head(cls, **kw):
    head = cls(2, 3, **kw)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
    return head


def test_am_softmax_hand_computed():
    head = _tiny_head(AMSoftmax)
    x = torch.tensor([[3.0, 4.0]])  # normalised (0.6, 0.8)
    logits = head(x, torch.tensor([1]))
    cos = [0.6, 0.8, -(0.6 + 0.8) / math.sqrt(2)]
    expected = [30 * cos[0], 30 * (cos[1] - 0.35), 30 * cos[2]]
    assert torch.allclose(logits, torch.tensor([expected]), atol=1e-5)
    loss = F.cross_entropy(logits, torch.tensor([1]))
    lse = math.log(sum(math.exp(v) for v in expected))
    assert abs(loss.item() - (lse - expected[1])) < 1e-4


def test_cosface_and_arcface_hand_computed():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.9]])
    labels = torch.tensor([1, 2])
    n = math.hypot(1.0, 0.9)
    cos = torch.tensor([[0.6, 0.8, -1.4 / math.sqrt(2)], [1.0 / n, 0.9 / n, -1.9 / (n * math.sqrt(2))]])
    cf = _tiny_head(CosFace)(x, labels)
    want = cos.clone()
    want[0, 1] -= 0.35
    want[1, 2] -= 0.35
    assert torch.allclose(cf, 64 * want, atol=1e-4)
    af = _tiny_head(ArcFace, margin=0.5)(x, labels)
    want = cos.clone()
    want[0, 1] = math.cos(math.acos(0.8) + 0.5)
    # theta = 3.09 rad: theta + m > pi, so the fallback cos - m sin m
    want[1, 2] = cos[1, 2] - 0.5 * math.sin(0.5)
    assert torch.allclose(af, 64 * want, atol=1e-4)


@pytest.mark.parametrize("name", ["am_softmax", "cosface", "arcface"])
def test_heads_stay_fp32_under_bf16_autocast(name):
    head = create_head(name, 8, 5)
    x = torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = torch.nn.functional.linear(x, torch.eye(8))  # bf16 under autocast
        assert emb.dtype == torch.bfloat16
        logits = head(emb, labels)
        assert logits.dtype == torch.float32
        loss = F.cross_entropy(logits, labels)
    loss.backward()
    assert head.weight.grad.dtype == torch.float32 and torch.isfinite(head.weight.grad).all()
    ref = head(emb.detach().float(), labels)
    assert torch.allclose(logits, ref, atol=1e-4)


def test_cos_is_clamped():
    head = AMSoftmax(2, 1, margin=0.0)
    with torch.no_grad():
        head.weight.fill_(1.0)
    logits = head(torch.tensor([[1e30, 1e30]]), torch.tensor([0]))
    assert logits.item() <= 30.0 + 1e-6


def test_factory_and_errors():
    assert list_heads() == ["am_softmax", "cosface", "arcface"]
    head = create_head("am_softmax", 128, 10)
    assert (head.scale, head.margin_value) == (30.0, 0.35)
    assert create_head("AM-Softmax", 4, 2, s=10, m=0.2).scale == 10.0
    with pytest.raises(ValueError, match="arcface"):
        create_head("sphereface", 4, 2)
    with pytest.raises(TypeError, match="allowed"):
        create_head("cosface", 4, 2, gamma=1)
    with pytest.raises(TypeError, match="integer"):
        head(torch.randn(2, 128), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        head(torch.randn(2, 128), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"\(B, 128\)"):
        head(torch.randn(2, 64), torch.tensor([0, 1]))
