"""Filter generators for DRConv (Chen et al., CVPR 2021, section 3.3; the DRConv implementations survey, 3.1).

Both map the layer input x (B, C, H, W) to per-sample, per-region filters (B, m, O, C, kh, kw) and are built
from standard nn.Conv2d / nn.Linear layers so module hooks can count them.

* ``PaperFilterGenerator`` (generator="paper", paper Fig. 2b): AdaptiveAvgPool(k) -> 1x1 conv C->h + sigmoid
  -> 1x1 conv h -> m*O*C with groups=m, no activation. Region j's filter is
  ``bias_j + sum_t s_{j,t} V_{j,t}`` over its h/m hidden units, with the bias held as ``shared + delta_j``
  (``shared``: one O x C x k x k parameter; ``expand.bias``: the deltas), the same function class.
* ``BasisFilterGenerator`` (generator="basis", the official megvii code): GAP -> Linear(C, m*r) ->
  ``a = 2 * sigmoid / r`` routing weights -> region j's filter is ``sum_t a_{j,t} B_t`` over r shared static
  kernels B_t. The kernels are held as ``basis``, an nn.Conv2d(C, r*O, k, stride, padding, dilation) so that
  the layer can use the dense-basis form (one conv with r*O outputs) instead of materialising filters.

For 1x1 kernels both also give the structure of their filters, ``W_bj = sum_t c_bjt K_jt``, as the operands of
``facerec.nn.ops.region_conv``: ``term_coefficients(x)`` (B, m, T) and ``stacked_kernels()`` (m or 1, T, O, C).

Initialisation: both are scaled so that the generated filters have the standard deviation of a default
nn.Conv2d of the same shape (uniform +-1/sqrt(fan_in), std 1/sqrt(3 fan_in)) while regions already differ, so
the layer's output scale at step 0 matches a plain conv and the mask gradient is not vanishingly small. The
regions' filters also start correlated (paper: a shared static part plus a 0.3-std per-region part; basis: positive
mixes of the same kernels), so a pixel whose mask flips keeps a similar filter.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["PaperFilterGenerator", "BasisFilterGenerator", "GroupedPointwiseConv", "INITS"]


def _conv_init_std(fan_in: int) -> float:
    """Std of nn.Conv2d's default weight init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    return 1.0 / math.sqrt(3.0 * fan_in)


# Relative std of the per-region part of the paper generator's filters at init="spread" (see reset_parameters).
_REGION_SPREAD = 0.3
#: Initialisations: "static" (every region one filter, no dynamic part: the layer starts as a conv; default)
#: or "spread" (regions start correlated but distinct: shared part + 0.3-std per-region part / random routing).
INITS = ("static", "spread")


class GroupedPointwiseConv(nn.Conv2d):
    """nn.Conv2d(in, out, 1, groups=g) computed with broadcast multiply-adds.

    Same parameters, hooks and results as the parent. The generator's shape (a few input channels per group,
    ~O*C outputs per group, k x k pixels) makes oneDNN's grouped conv very slow on CPU; here each of the
    in/g inputs of a group scales its weight column in one pass over the output (~20x faster).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__(in_channels, out_channels, 1, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        groups, pixels = self.groups, height * width
        per_in, per_out = self.in_channels // groups, self.out_channels // groups
        grouped_in = x.reshape(batch, groups, per_in, 1, pixels)
        weight = self.weight.view(1, groups, per_out, per_in, 1).to(x.dtype)
        if self.bias is None:
            out = weight[:, :, :, 0] * grouped_in[:, :, 0]
        else:
            out = torch.addcmul(self.bias.view(1, groups, per_out, 1).to(x.dtype), weight[:, :, :, 0],
                                grouped_in[:, :, 0])
        for t in range(1, per_in):
            out = torch.addcmul(out, weight[:, :, :, t], grouped_in[:, :, t])
        return out.reshape(batch, self.out_channels, height, width)


class PaperFilterGenerator(nn.Module):
    """The paper's two-conv generator: x (B, C, H, W) -> filters (B, m, O, C, k, k).

    hidden_channels h must be a multiple of m (each region's group sees h/m hidden units). Parameters:
    C*h + h (first conv), h*O*C*k^2 + m*O*C*k^2 (second conv) and O*C*k^2 (``shared``): (h/m + 1) * m + 1
    times a plain conv's.

    ``filter_parameter_names``: ``expand.bias`` holds the per-region filter deltas (m*O*C*k^2 values), filters
    by role and a bias by name only; ``facerec.models.param_groups`` reads this to weight-decay them.
    ``region_parameter_names``: the parameters that make one region's filter differ from another's (the deltas
    and the dynamic part V), for ``optim.weight_decay_region_factor``.
    """

    filter_parameter_names = ("expand.bias",)
    region_parameter_names = ("expand.weight", "expand.bias")

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], regions: int,
                 hidden_channels: int, init: str = "static") -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
        self.init = init
        if hidden_channels < 1 or hidden_channels % regions != 0:
            raise ValueError(f"hidden_channels must be a positive multiple of regions={regions}, "
                             f"got {hidden_channels}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.regions, self.hidden_channels = regions, hidden_channels
        self.pool = nn.AdaptiveAvgPool2d(kernel_size)
        self.squeeze = nn.Conv2d(in_channels, hidden_channels, 1)
        self.expand = GroupedPointwiseConv(hidden_channels, regions * out_channels * in_channels, regions)
        # The part of the static filter all regions share (see reset_parameters): region j's static filter is
        # shared + expand.bias_j, a reparametrisation of the paper's bias_j that lets the shared part learn from
        # every pixel, as a plain conv's weight does, instead of each region's copy from its 1/m of them.
        self.shared = nn.Parameter(torch.empty(out_channels, in_channels, *kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = _conv_init_std(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        per_group = self.hidden_channels // self.regions
        if self.init == "static":
            # A static conv: the shared filter has the default conv init, the per-region deltas and the dynamic
            # part V are zero. Regions separate as each delta learns from its own pixels; the mask gradient
            # (Eq.7 differences) grows with them instead of starting large.
            nn.init.uniform_(self.shared, -math.sqrt(3.0) * std, math.sqrt(3.0) * std)
            nn.init.zeros_(self.expand.weight)
            nn.init.zeros_(self.expand.bias)
            return
        # Filter_j = bias_j + sum_t s_t V_{j,t}, s = sigmoid(.) ~ 0.5 at start (E[s^2] ~ 0.25). The static part
        # is one filter shared by all regions (variance (1 - d^2) std^2) and the per-region part has variance
        # d^2 std^2 (d = _REGION_SPREAD): regions start correlated (1 - d^2), as the basis generator's
        # positive mixes of shared kernels do. With independent per-region filters every mask flip (the guide
        # has no BN and a large relative gradient) swaps a pixel to an unrelated random filter, and training
        # from scratch stalls (synthetic 8 identities, 30 steps x 16, lr 0.01: final loss 6.1 with independent
        # regions, 0.6 correlated; plain MobileFaceNet 0.0).
        bias_std = std * math.sqrt(1.0 - _REGION_SPREAD ** 2)
        weight_std = _REGION_SPREAD * std / math.sqrt(per_group * 0.25)
        nn.init.uniform_(self.expand.weight, -math.sqrt(3.0) * weight_std, math.sqrt(3.0) * weight_std)
        nn.init.uniform_(self.shared, -math.sqrt(3.0) * bias_std, math.sqrt(3.0) * bias_std)
        nn.init.zeros_(self.expand.bias)

    def coefficients(self, x: Tensor) -> Tensor:
        """s (B, m, t) = sigmoid(squeeze(GAP(x))) per region group (1x1 kernels, t = h / m)."""
        if self.kernel_size != (1, 1):
            raise ValueError(f"coefficients() is for 1x1 kernels, this generator has {self.kernel_size}")
        hidden = torch.sigmoid(self.squeeze(self.pool(x)))
        return hidden.view(x.shape[0], self.regions, self.hidden_channels // self.regions)

    def static_kernels(self) -> tuple[Tensor, Tensor]:
        """(A (m, O, C), V (m, t, O, C)) with filter_bj = A_j + sum_t s_bjt V_jt (1x1 kernels; A_j = shared +
        expand.bias_j, V a view of expand.weight)."""
        if self.kernel_size != (1, 1):
            raise ValueError(f"static_kernels() is for 1x1 kernels, this generator has {self.kernel_size}")
        m, o, c = self.regions, self.out_channels, self.in_channels
        terms = self.hidden_channels // m
        static = self.expand.bias.view(m, o, c) + self.shared.view(1, o, c)
        dynamic = self.expand.weight.view(m, o, c, terms).permute(0, 3, 1, 2)
        return static, dynamic

    def term_coefficients(self, x: Tensor) -> Tensor:
        """c (B, m, 1+t) = [1, s_b]: the coefficients of ``stacked_kernels`` (1x1 kernels)."""
        coef = self.coefficients(x)
        return torch.cat([coef.new_ones(coef.shape[0], coef.shape[1], 1), coef], 2)

    def stacked_kernels(self) -> Tensor:
        """K (m, 1+t, O, C) = [A_j, V_j1, ..., V_jt] with filter_bj = sum_t c_bjt K_jt (1x1 kernels)."""
        static, dynamic = self.static_kernels()
        return torch.cat([static.unsqueeze(1), dynamic], 1)

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.sigmoid(self.squeeze(self.pool(x)))
        flat = self.expand(hidden)
        kh, kw = self.kernel_size
        filters = flat.view(x.shape[0], self.regions, self.out_channels, self.in_channels, kh, kw)
        return filters + self.shared.to(filters.dtype)


class BasisFilterGenerator(nn.Module):
    """The official shared-basis generator: routing weights a (B, m, r) over r static kernels.

    ``routing(x)`` -> a (B, m, r); ``forward(x)`` -> filters (B, m, O, C, k, k) = sum_t a[:, :, t] B_t.
    ``basis`` is an nn.Conv2d(C, r*O, k, stride, padding, dilation, bias=False): its output channel block t
    is B_t applied to x (the dense-basis fast path calls it as a module).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], stride, padding,
                 dilation, regions: int, num_bases: int, init: str = "static") -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
        self.init = init
        if num_bases < 1:
            raise ValueError(f"num_bases must be >= 1, got {num_bases}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.regions, self.num_bases = regions, num_bases
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.route = nn.Linear(in_channels, regions * num_bases)
        self.basis = nn.Conv2d(in_channels, num_bases * out_channels, kernel_size, stride, padding, dilation,
                               bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "static":
            # A static conv: zero routing, so every sample and region mixes the bases equally (a = 1/r), as the
            # official code's near-zero N(0, 0.01) routing does.
            nn.init.zeros_(self.route.weight)
            nn.init.zeros_(self.route.bias)
        else:
            # Regions start distinct: the routing bias gives each region its own mix of the bases.
            nn.init.normal_(self.route.bias, 0.0, 1.0)
        with torch.no_grad():
            coef = 2.0 * torch.sigmoid(self.route.bias.view(self.regions, self.num_bases)) / self.num_bases
            mix_norm = coef.pow(2).sum(dim=1).mean().item()
        std = _conv_init_std(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        basis_std = std / math.sqrt(mix_norm)
        nn.init.uniform_(self.basis.weight, -math.sqrt(3.0) * basis_std, math.sqrt(3.0) * basis_std)

    def routing(self, x: Tensor) -> Tensor:
        """Routing weights a (B, m, r) = 2 * sigmoid(Linear(GAP(x))) / r."""
        logits = self.route(self.pool(x).flatten(1))
        return (2.0 / self.num_bases) * torch.sigmoid(logits).view(x.shape[0], self.regions, self.num_bases)

    def bases(self) -> Tensor:
        """The shared kernels as (r, O, C, kh, kw)."""
        kh, kw = self.kernel_size
        return self.basis.weight.view(self.num_bases, self.out_channels, self.in_channels, kh, kw)

    def term_coefficients(self, x: Tensor) -> Tensor:
        """The routing weights (B, m, r): the coefficients of ``stacked_kernels``."""
        return self.routing(x)

    def stacked_kernels(self) -> Tensor:
        """The shared kernels as (1, r, O, C), one set for all regions (1x1 kernels)."""
        if self.kernel_size != (1, 1):
            raise ValueError(f"stacked_kernels() is for 1x1 kernels, this generator has {self.kernel_size}")
        return self.bases()[..., 0, 0].unsqueeze(0)

    def mix(self, coef: Tensor) -> Tensor:
        """Filters (B, m, O, C, kh, kw) from routing weights a (B, m, r)."""
        bases = self.bases().to(coef.dtype)
        flat = torch.matmul(coef, bases.reshape(self.num_bases, -1))
        return flat.view(*coef.shape[:2], *bases.shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(self.routing(x))
