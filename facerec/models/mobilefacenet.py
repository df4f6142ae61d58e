"""MobileFaceNet (Chen et al., "MobileFaceNets", CCBR 2018) with a choice of bottleneck 1x1 convolution.

Follows the layer table of the MobileFaceNet paper (Chen et al. 2018, Table 1), as the public implementations build it:

    conv3x3 s2 64 -> depthwise 3x3 64 -> bottlenecks (t, c, n, s) = (2,64,5,2), (4,128,1,2), (2,128,6,1),
    (4,128,1,2), (2,128,2,1) -> conv1x1 512 -> linear GDConv (7x7 at 112x112, 7x6 at 112x96)
    -> linear conv1x1 to the embedding + BN.

BN follows every conv; PReLU follows every conv except the bottleneck projections, the GDConv and the last
1x1. A bottleneck has an identity shortcut only when its stride is 1 and in = out channels. The bottleneck 1x1
convolutions (expansion and projection, 30 layers) come from a ``facerec.nn.PointwiseFactory`` so the
DRConv paper's variants (Table 2: DRConv, CondConv, local convolution) differ from the plain network only in
those layers; see ``facerec.models.registry`` for the variant defaults and their reasoning.

Shapes: input (B, 3, H, W) RGB with (H, W) = ``input_size``; output embedding (B, embedding_size), not
normalised (the margin heads and the evaluation normalise).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from facerec._quote import quote
from facerec.nn import GuideConv, PointwiseFactory, pointwise_factory

__all__ = [
    "MOBILEFACENET_SETTINGS",
    "INPUT_SIZES",
    "ConvBNAct",
    "Bottleneck",
    "MobileFaceNet",
]

#: The paper's bottleneck table: (expansion t, output channels c, repeats n, stride of the first repeat s).
MOBILEFACENET_SETTINGS: Tuple[Tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)

#: Input sizes (H, W) the network is defined for; the GDConv kernel is the final 7x7 / 7x6 feature map.
INPUT_SIZES: Tuple[Tuple[int, int], ...] = ((112, 112), (112, 96))

#: A pointwise kind name ("standard", "drconv", "condconv", "local") or a factory from ``pointwise_factory``.
Pointwise = Union[str, PointwiseFactory]


def _factory(pointwise: Pointwise) -> PointwiseFactory:
    return pointwise if isinstance(pointwise, PointwiseFactory) else pointwise_factory(pointwise)


def _conv_out(size: Tuple[int, int], stride: int) -> Tuple[int, int]:
    """Spatial size after a 3x3 conv with padding 1 and the given stride."""
    return ((size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional PReLU (one slope per channel).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, Ho, Wo).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride: int = 1, padding=0,
                 groups: int = 1, activation: bool = True) -> None:
        layers: List[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation:
            layers.append(nn.PReLU(out_channels))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand (BN, PReLU) -> 3x3 depthwise with the stride (BN, PReLU) -> 1x1 project (BN).

    ``expand`` / ``project`` build the 1x1 convolutions: a ``facerec.nn.PointwiseFactory`` (kind and keywords
    fixed, see ``facerec.nn.pointwise_factory``) or a kind name (its defaults). The module names (``expand``,
    ``project``, ``guide``, ...) and so the state_dict keys do not depend on the kind's keywords.
    With ``shared_guide=True`` (DRConv only, as the official DRConv code's ``masknet``) the block owns one
    1x1 ``guide`` (a ``facerec.nn.GuideConv``: conv in_channels -> regions, with its norm) applied to the block
    input; its guided feature F (B, regions, H, W) drives the expansion, and F subsampled by the stride
    (nearest neighbour, i.e. ``F[..., ::s, ::s]``, the depthwise conv's output grid) drives the projection, so
    both 1x1 layers see one mask.
    Shapes: (B, in_channels, H, W) -> (B, out_channels, Ho, Wo) with Ho = (H - 1) // stride + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int,
                 input_size: Tuple[int, int], expand: Pointwise = "standard", project: Pointwise = "standard",
                 shared_guide: bool = False) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {quote(stride)}")
        hidden = in_channels * expansion
        expand_factory, project_factory = _factory(expand), _factory(project)
        output_size = _conv_out(input_size, stride)
        self.stride = stride
        self.use_shortcut = stride == 1 and in_channels == out_channels
        guided = [f for f in (expand_factory, project_factory) if f.accepts_guide] if shared_guide else []
        self.guided = bool(guided)
        if self.guided:
            regions = {f.regions for f in guided}
            if len(regions) > 1:
                raise ValueError(f"a shared guide needs one region count, got expand/project regions {regions}")
            options = guided[0].guide_kwargs
            if any(f.guide_kwargs != options for f in guided):
                raise ValueError(f"a shared guide needs one guide setting, got {[f.guide_kwargs for f in guided]}")
            self.guide = GuideConv(in_channels, regions.pop(), 1, **options)
        self._expand_takes_guide = self.guided and expand_factory.accepts_guide
        self._project_takes_guide = self.guided and project_factory.accepts_guide
        self.expand = expand_factory(in_channels, hidden, input_size=input_size,
                                     external_guide=self._expand_takes_guide)
        self.expand_bn = nn.BatchNorm2d(hidden)
        self.expand_act = nn.PReLU(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(hidden)
        self.depthwise_act = nn.PReLU(hidden)
        self.project = project_factory(hidden, out_channels, input_size=output_size,
                                       external_guide=self._project_takes_guide)
        self.project_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> (B, out_channels, Ho, Wo)."""
        guide = self.guide(x) if self.guided else None
        h = self.expand(x, guide) if self._expand_takes_guide else self.expand(x)
        h = self.expand_act(self.expand_bn(h))
        h = self.depthwise_act(self.depthwise_bn(self.depthwise(h)))
        if self._project_takes_guide:
            if self.stride > 1:
                guide = guide[..., ::self.stride, ::self.stride]
            h = self.project(h, guide)
        else:
            h = self.project(h)
        h = self.project_bn(h)
        return x + h if self.use_shortcut else h


class MobileFaceNet(nn.Module):
    """MobileFaceNet backbone: RGB faces (B, 3, H, W) -> embeddings (B, embedding_size).

    Args:
        input_size: (112, 112) or (112, 96); fixes the GDConv kernel (7x7 or 7x6) and the local-conv sizes.
        embedding_size: width of the final linear 1x1 conv + BN (paper: 128); any positive integer.
        pointwise: what every bottleneck 1x1 conv is: a kind name ("standard", "drconv", "condconv", "local")
            or a ``facerec.nn.pointwise_factory(kind, **kw)``, or a sequence of 30 of those, one per bottleneck
            1x1 conv in network order (expand, project, expand, ...).
        pointwise_kwargs: keywords of the kind (regions, generator, experts, ...; see
            ``facerec.nn.pointwise_factory``) when ``pointwise`` is a single kind name.
        shared_guide: DRConv only: one guide conv per block shared by its 1x1 DRConvs (see ``Bottleneck``).

    Modules: ``stem`` (conv 3x3 s2 + depthwise 3x3), ``stages`` (5 sequences of ``Bottleneck``), ``conv_sep``
    (1x1 to 512), ``gdconv`` (linear global depthwise conv), ``embedding`` (linear 1x1 conv + BN). The
    modules after the global depthwise conv are listed in ``late_module_names`` (weight decay 4e-4, see
    ``facerec.models.weight_decay``).
    """

    late_module_names: Tuple[str, ...] = ("embedding",)

    def __init__(self, input_size: Sequence[int] = (112, 112), embedding_size: int = 128,
                 pointwise="standard", pointwise_kwargs: Optional[Dict[str, Any]] = None,
                 shared_guide: bool = False) -> None:
        super().__init__()
        size = tuple(int(v) for v in input_size) if isinstance(input_size, (tuple, list)) else None
        if size not in INPUT_SIZES:
            raise ValueError(f"input_size must be one of {list(INPUT_SIZES)}, got {quote(input_size)}")
        if not isinstance(embedding_size, int) or isinstance(embedding_size, bool) or embedding_size < 1:
            raise ValueError(f"embedding_size must be a positive int, got {quote(embedding_size)}")
        factories = self._factories(pointwise, pointwise_kwargs)
        self.input_size = size
        self.embedding_size = embedding_size

        self.stem = nn.Sequential(
            ConvBNAct(3, 64, 3, stride=2, padding=1),
            ConvBNAct(64, 64, 3, stride=1, padding=1, groups=64),
        )
        feat = _conv_out(size, 2)
        in_channels = 64
        stages: List[nn.Module] = []
        k = 0
        for t, c, n, s in MOBILEFACENET_SETTINGS:
            blocks: List[nn.Module] = []
            for i in range(n):
                stride = s if i == 0 else 1
                blocks.append(Bottleneck(in_channels, c, stride, t, feat, factories[k], factories[k + 1],
                                         shared_guide))
                k += 2
                feat = _conv_out(feat, stride)
                in_channels = c
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.conv_sep = ConvBNAct(in_channels, 512, 1)
        self.gdconv = ConvBNAct(512, 512, feat, groups=512, activation=False)
        self.embedding = nn.Sequential(
            nn.Conv2d(512, embedding_size, 1, bias=False),
            nn.BatchNorm2d(embedding_size),
        )
        self.final_feature_size = feat

    @staticmethod
    def _factories(pointwise, pointwise_kwargs: Optional[Dict[str, Any]]) -> List[PointwiseFactory]:
        count = 2 * sum(n for _, _, n, _ in MOBILEFACENET_SETTINGS)
        if pointwise_kwargs and not isinstance(pointwise, str):
            raise ValueError("pointwise_kwargs needs pointwise to be one kind name; for per-layer settings pass "
                             "facerec.nn.pointwise_factory(kind, **kw) objects")
        if isinstance(pointwise, str):
            return [pointwise_factory(pointwise, **(pointwise_kwargs or {}))] * count
        if isinstance(pointwise, PointwiseFactory):
            return [pointwise] * count
        if isinstance(pointwise, (list, tuple)) and len(pointwise) == count:
            return [_factory(p) for p in pointwise]
        raise ValueError(f"pointwise must be a kind name, a PointwiseFactory or a sequence of {count} of them, "
                         f"got {quote(pointwise)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) RGB, normalised -> embedding (B, embedding_size)."""
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"expected input (B, 3, {self.input_size[0]}, {self.input_size[1]}), "
                             f"got {tuple(x.shape)}")
        x = self.stem(x)
        x = self.stages(x)
        x = self.conv_sep(x)
        x = self.gdconv(x)
        x = self.embedding(x)
        return x.flatten(1)
