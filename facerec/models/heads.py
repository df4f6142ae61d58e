"""Margin classification heads for face recognition, computed in fp32 even under autocast.

* AM-Softmax (Wang et al. 2018, "Additive Margin Softmax"): logits = s * (cos(theta_j) - m * [j = y]),
  defaults s = 30, m = 0.35 (the DRConv paper's loss, section 4.2; the defaults of the TreB1eN and face.evoLVe
  implementations).
* CosFace (Wang et al. 2018, "Large Margin Cosine Loss"): the same formula, its paper's s = 64, m = 0.35.
* ArcFace (Deng et al. 2019): logits = s * cos(theta_y + m) for the target, s = 64, m = 0.5; where
  theta_y + m > pi the target logit falls back to s * (cos(theta_y) - m * sin(m)) so it stays monotonic
  (as insightface).

Features and class weights are L2-normalised, cos is clamped to [-1, 1], and the head runs with autocast
disabled on float32 copies, so its logits are fp32 whatever the backbone's precision. Shapes: embeddings
(B, D) any float dtype, labels (B,) integer class ids in [0, num_classes) -> logits (B, num_classes) fp32;
the loss is ``F.cross_entropy(logits, labels)``.
"""
import math
from typing import Any, Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from facerec._quote import quote

__all__ = ["MarginHead", "AMSoftmax", "CosFace", "ArcFace", "create_head", "list_heads"]


class MarginHead(nn.Module):
    """Base class: a (num_classes, embedding_size) class-weight matrix and cosine logits in fp32.

    Subclasses implement ``margin(cos, labels)`` -> logits before the scale (B, num_classes).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        for key, value in (("embedding_size", embedding_size), ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {quote(value)}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {quote(scale)}")
        if not 0 <= margin < math.pi / 2:
            raise ValueError(f"margin must be in [0, pi/2), got {quote(margin)}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.scale = float(scale)
        self.margin_value = float(margin)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
                f"scale={self.scale}, margin={self.margin_value}")

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(theta) (B, num_classes) in fp32 between normalised embeddings and class weights."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return F.linear(x, w).clamp(-1.0, 1.0)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings (B, D), labels (B,) int -> scaled margin logits (B, num_classes) fp32."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must be (B, {self.embedding_size}), got {tuple(embeddings.shape)}")
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        labels = labels.long()
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = self.cosine(embeddings)
            return self.scale * self.margin(cos, labels)


def _one_hot(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, n) one-hot of ``labels`` (B,) in ``cos``'s dtype. Out-of-range labels: ValueError on CPU; on other
    devices an asynchronous device assert, so a training step never waits for the host (CUDA graphs, no sync)."""
    classes = cos.shape[1]
    if labels.device.type == "cpu":
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise ValueError(f"labels must lie in [0, {classes}), got min {int(labels.min())} "
                             f"max {int(labels.max())}")
    elif labels.numel():
        torch._assert_async(((labels >= 0) & (labels < classes)).all(), f"labels must lie in [0, {classes})")
    return torch.zeros_like(cos).scatter_(1, labels.long().unsqueeze(1), 1.0)


class AMSoftmax(MarginHead):
    """Additive margin softmax: s * (cos(theta_j) - m * [j = y]); defaults s = 30, m = 0.35."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 30.0, margin: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, scale, margin)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cos - self.margin_value * _one_hot(cos, labels)


class CosFace(AMSoftmax):
    """Large margin cosine loss: the AM-Softmax formula with the CosFace paper's s = 64, m = 0.35."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, scale, margin)


class ArcFace(MarginHead):
    """Additive angular margin: s * cos(theta_y + m) on the target; defaults s = 64, m = 0.5."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__(embedding_size, num_classes, scale, margin)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.margin_value
        one_hot = _one_hot(cos, labels)
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(0.0))
        shifted = cos * math.cos(m) - sin * math.sin(m)
        # theta + m beyond pi: keep the logit decreasing in theta (insightface's fallback)
        shifted = torch.where(cos > math.cos(math.pi - m), shifted, cos - m * math.sin(m))
        return cos + one_hot * (shifted - cos)


_HEADS: Dict[str, Callable[..., MarginHead]] = {
    "am_softmax": AMSoftmax,
    "cosface": CosFace,
    "arcface": ArcFace,
}


def list_heads() -> List[str]:
    """Names accepted by ``create_head``."""
    return list(_HEADS)


def create_head(name: str, embedding_size: int, num_classes: int, **kw: Any) -> MarginHead:
    """Build a margin head by name ("am_softmax", "cosface", "arcface"); ``scale`` / ``margin`` keywords
    override the defaults (also accepted as ``s`` / ``m``). Unknown name -> ValueError listing the valid ones.
    """
    key = name.lower().replace("-", "_")
    if key == "amsoftmax":
        key = "am_softmax"
    if key not in _HEADS:
        raise ValueError(f"unknown head {quote(name)}; valid: {', '.join(_HEADS)}")
    for short, long in (("s", "scale"), ("m", "margin")):
        if short in kw:
            if long in kw:
                raise TypeError(f"give either {quote(short)} or {quote(long)}, not both")
            kw[long] = kw.pop(short)
    unknown = set(kw) - {"scale", "margin"}
    if unknown:
        raise TypeError(f"unexpected keyword(s) {quote(sorted(unknown))} for head {quote(name)}; "
                        "allowed: scale, margin")
    return _HEADS[key](embedding_size, num_classes, **kw)
