"""Model registry: ``create_model(name, **kw)`` for the MobileFaceNet family of the DRConv paper's Table 2.

Names (all share ``input_size=(112, 112) | (112, 96)`` and ``embedding_size=128``):

``mobilefacenet``
    The plain network (189.4M MADDs, 1.00M parameters at 112x96; see ``facerec.models.complexity``).
``drconv_mobilefacenet``
    Every 1x1 conv of every bottleneck (30 layers) is a DRConv with m = 8 regions (paper section 4.2).
    Default design, chosen so the paper-style count lands on Table 2's 201M (ours: 200.1M at 112x96):

    * one guide per block (``shared_guide=True``): a 1x1 conv on the block input (C_in -> m) whose mask
      drives both the expansion and the projection (subsampled on the depthwise conv's grid for stride 2),
      as the official DRConv code shares its ``masknet`` across a block's 1x1 DRConvs. A guide per layer
      would cost 10.6M MADDs (total 206M with the generator); shared, 4.4M.
    * the paper's generator (global pool -> 1x1 conv + sigmoid -> 1x1 conv with groups = m) with hidden
      width m (``hidden_channels=8``, DRConv2d's default), so each region's filter is generated from its
      own hidden unit: m*C*O multiply-adds per layer, i.e. one multiply-add per generated filter weight
      (6.3M over the 30 layers), exactly what the official FLOP counter charges per DRConv
      (``spatial_groups * O * C * k*k``). The survey's m^2 hidden width (as shallowtoil) costs 64*C*O per
      layer: +50M MADDs (244M in all) and about 57M parameters, far from Table 2.
    * the region convolution counts one filter per output pixel (C*O*H*W), like a standard conv.

    Total: 189.4 + 4.4 (guides) + 6.3 (generators) + 0.04 (generator first layers) = 200.1M vs 201M
    (-0.4%); the rest is within rounding of how the paper counted the global pools and the routing.
``condconv_mobilefacenet``
    Every bottleneck 1x1 conv is a CondConv with 8 experts (Yang et al. 2019), as Table 1/2 compare.
    Mixing the experts costs 8*C*O per layer (6.3M) and routing C*8 (0.04M): 195.7M vs Table 2's 195M.
``local_mobilefacenet``
    Local (unshared) convolution in the last three layers, as Table 2's row ("under the limitation of device
    memory, we apply local convolution in the last three layers"). We take the last three of the 30
    bottleneck 1x1 convs (the layers the other variants replace): the projection of block 14 and the
    expansion and projection of block 15, all at the final 7x6 (7x7) grid. Local weights cost C*O*H*W
    parameters, so only the lowest resolution fits memory (each of these layers holds 1.4M weights at 7x6,
    against 5.5M for a 128->256 layer at 14x12), and on aligned faces each 7x6 cell is a fixed facial region,
    the setting local convolution was designed for. MADDs are unchanged (189.4M, as Table 2 says); parameters
    rise to about 5.1M. ``local_layers`` changes how many trailing bottleneck 1x1 layers are local.
"""
from typing import Any, Callable, Dict, List

import torch.nn as nn

from facerec._quote import quote
from facerec.nn import pointwise_factory

from .mobilefacenet import MOBILEFACENET_SETTINGS, MobileFaceNet

__all__ = ["create_model", "list_models", "PAPER_TABLE2_MADDS"]

#: MADDs (millions) of the DRConv paper's Table 2 (MobileFaceNet family, 112x96, MS1M-V2).
PAPER_TABLE2_MADDS: Dict[str, float] = {
    "mobilefacenet": 189.0,
    "local_mobilefacenet": 189.0,
    "condconv_mobilefacenet": 195.0,
    "drconv_mobilefacenet": 201.0,
}

_NUM_POINTWISE = 2 * sum(n for _, _, n, _ in MOBILEFACENET_SETTINGS)


def _take_common(kw: Dict[str, Any]) -> Dict[str, Any]:
    common = {}
    for key in ("input_size", "embedding_size"):
        if key in kw:
            common[key] = kw.pop(key)
    return common


def _reject_rest(name: str, kw: Dict[str, Any], allowed: List[str]) -> None:
    if kw:
        raise TypeError(f"{name}: unexpected keyword(s) {quote(sorted(kw))}; allowed: "
                        f"{', '.join(['input_size', 'embedding_size'] + allowed)}")


def _mobilefacenet(**kw: Any) -> nn.Module:
    common = _take_common(kw)
    _reject_rest("mobilefacenet", kw, [])
    return MobileFaceNet(pointwise="standard", **common)


def _drconv_mobilefacenet(**kw: Any) -> nn.Module:
    common = _take_common(kw)
    shared_guide = bool(kw.pop("shared_guide", True))
    layer_kw: Dict[str, Any] = {"regions": 8, "generator": "paper"}
    layer_kw.update(kw)
    return MobileFaceNet(pointwise=pointwise_factory("drconv", **layer_kw), shared_guide=shared_guide, **common)


def _condconv_mobilefacenet(**kw: Any) -> nn.Module:
    common = _take_common(kw)
    experts = kw.pop("experts", 8)
    _reject_rest("condconv_mobilefacenet", kw, ["experts"])
    return MobileFaceNet(pointwise=pointwise_factory("condconv", experts=experts), **common)


def _local_mobilefacenet(**kw: Any) -> nn.Module:
    common = _take_common(kw)
    local_layers = kw.pop("local_layers", 3)
    _reject_rest("local_mobilefacenet", kw, ["local_layers"])
    if not isinstance(local_layers, int) or isinstance(local_layers, bool) or not 0 <= local_layers <= 5:
        raise ValueError(f"local_layers must be an int in [0, 5] (the 1x1 layers at the final grid), "
                         f"got {quote(local_layers)}")
    kinds = ["standard"] * (_NUM_POINTWISE - local_layers) + ["local"] * local_layers
    return MobileFaceNet(pointwise=kinds, **common)


_MODELS: Dict[str, Callable[..., nn.Module]] = {
    "mobilefacenet": _mobilefacenet,
    "drconv_mobilefacenet": _drconv_mobilefacenet,
    "condconv_mobilefacenet": _condconv_mobilefacenet,
    "local_mobilefacenet": _local_mobilefacenet,
}


def list_models() -> List[str]:
    """Names accepted by ``create_model``, in Table 2 order."""
    return list(_MODELS)


def create_model(name: str, **kw: Any) -> nn.Module:
    """Build a registered backbone: (B, 3, H, W) RGB -> (B, embedding_size) embeddings.

    Keywords: ``input_size`` ((112, 112) default or (112, 96)), ``embedding_size`` (128), and per model:
    drconv: ``regions`` (8), ``generator`` ("paper" or "basis"), ``hidden_channels`` (= regions),
    ``shared_guide`` (True) and any other ``facerec.nn.DRConv2d`` keyword; condconv: ``experts`` (8);
    local: ``local_layers`` (3). An unknown name raises ValueError listing the valid ones.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {quote(name)}; valid: {', '.join(_MODELS)}")
    return _MODELS[name](**kw)
