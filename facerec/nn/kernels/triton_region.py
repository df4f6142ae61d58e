"""Triton kernels of DRConv's 1x1 region convolution, forward and backward (Chen et al., CVPR 2021, arXiv
2003.12243, sections 3.1-3.3: the Eq.3-5 forward with the guided mask of Eq.4, the per-region term of Eq.7 for the
guide's gradient, the filter generator's structure).

The layer's filters have static structure: region j of sample b uses ``W_bj = sum_t coef[b, j, t] K[j, t]`` with
static kernels K (M, T, O, C) and per-sample coefficients coef (B, m, T). The paper generator is ``coef =
[1, s_b]``, ``K = [A_j, V_j]`` (``W_bj = A_j + sum_t s_bjt V_jt``); the basis generator shares the kernels
across regions (M = 1): ``W_bj = sum_r a_bjr K_r``. Nothing of size B*m*O*C is ever formed:

* region ids (the argmax of the guided feature, first maximum, NaN the largest, as
  ``facerec.nn.functional.guided_mask``) and, for per-region kernels, a stable sort of the batch's pixels by region
  are computed on the device; bucket sizes never leave it (grids are sized by upper bounds, tiles past a bucket's
  end exit at once), so every call is free of host synchronisation and CUDA-graph capturable;
* forward: one tiled GEMM per region bucket against the region's static kernels, ``y_n = sum_t coef[b, j, t]
  (K[j, t] x_n)``, the coefficients applied per pixel row in registers, rows written back to their pixels;
* backward, one kernel: ``U_it(n) = K[i, t]^T dY_n`` for every region i and term t (shared kernels: once), giving
  the own region's ``dX_n = sum_t coef U``, Eq.7 ``g_i(n) = <dY_n, W_bi x_n> = sum_t coef[b, i, t] <U_it, x_n>`` for
  every region and the own region's ``<U_jt, x_n>`` whose per-(sample, region) sums are grad_coef; grad_kernels
  ``dK[j, t] = sum_{n in j} coef[b, j, t] dY_n x_n^T`` by a split-K GEMM per bucket.

Every result is deterministic (no atomics: partial sums go to buffers that are summed in a fixed order). GEMMs run
in the input dtype (float32 or bfloat16) and accumulate in float32; float32 GEMMs use TF32 only where
``torch.get_float32_matmul_precision()`` is not "highest". Plain ``tl.dot`` (no Hopper-only features), so any
GPU Triton supports. CUDA tensors run the compiled kernels; CPU tensors run them under Triton's interpreter
(``TRITON_INTERPRET=1`` before triton is imported; slow: tests only).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["available", "region_conv_forward", "region_conv_backward"]

# Tile sizes (powers of two, at least 16: tl.dot's minimum; smaller for small C or O) and warps per program, per
# kernel; FLOAT32_TILES overrides them for float32 GEMMs without TF32 (FMA dots need more registers). Chosen so that
# no kernel spills registers on sm_80 / sm_90 (ptxas resource usage of the compiled kernels).
TILES = {
    "forward": {"BLOCK_P": 64, "BLOCK_O": 64, "BLOCK_C": 32, "num_warps": 4},
    "backward": {"BLOCK_P": 64, "BLOCK_O": 32, "BLOCK_C": 64, "num_warps": 8},
    "kernel_grad": {"BLOCK_P": 32, "BLOCK_O": 64, "BLOCK_C": 64, "num_warps": 4},
    "coef_grad": {"BLOCK_P": 128, "num_warps": 4},
}
FLOAT32_TILES = {"forward": {"num_warps": 8}, "backward": {"BLOCK_C": 32}}
# Split-K of the kernel gradient: enough programs to fill the GPU, at least this many tiles per slice, partial
# sums of at most KERNEL_GRAD_MAX_PARTIAL_BYTES; SPLIT_K set to an int overrides the choice.
MIN_TILES_PER_SLICE = 8
KERNEL_GRAD_MAX_PARTIAL_BYTES = 1 << 27
SPLIT_K: int | None = None

_jit_module = None
_interpreted = False
_available: bool | None = None


def available() -> bool:
    """Whether Triton can be imported (the kernels themselves are compiled on first use)."""
    global _available
    if _available is None:
        try:
            import triton  # noqa: F401
            _available = True
        except ImportError:
            _available = False
    return _available


def _jit(device: torch.device):
    """The kernels module (imported on first use). CUDA tensors run the compiled kernels; CPU tensors need Triton's
    interpreter, which Triton fixes when it is imported (``TRITON_INTERPRET=1`` set before ``import triton``)."""
    global _jit_module, _interpreted
    if not available():
        raise RuntimeError("the Triton region-convolution kernels need triton (pip install 'facerec[gpu]')")
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    _interpreted = isinstance(tl.sum, InterpretedFunction)
    if device.type != "cuda" and not _interpreted:
        raise RuntimeError(f"the Triton region-convolution kernels got {device} tensors: they run on CUDA tensors, or "
                           "on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 set before triton is "
                           "imported)")
    if _jit_module is None:
        from facerec.nn.kernels import _triton_region_jit
        _jit_module = _triton_region_jit
    return _jit_module


def _pow2(value: int, low: int = 1) -> int:
    return max(low, 1 << max(0, int(value) - 1).bit_length())


def _tiles(kind: str, precision: str, out_channels: int, channels: int) -> dict:
    """Launch options of one kernel: ``TILES[kind]`` (with ``FLOAT32_TILES`` for exact float32 GEMMs), the channel
    tiles shrunk to the problem (a power of two, at least 16)."""
    tiles = dict(TILES[kind])
    if precision == "ieee":
        tiles.update(FLOAT32_TILES.get(kind, {}))
    for key, size in (("BLOCK_O", out_channels), ("BLOCK_C", channels)):
        if key in tiles:
            tiles[key] = max(16, min(tiles[key], _pow2(size)))
    return tiles


def _rows_layout(t: Tensor) -> Tensor:
    """t (B, K, h, w) with contiguous pixel rows (channel stride 1; a channels_last copy otherwise): the kernels
    gather rows of pixels, and rows of contiguous channels keep those loads coalesced."""
    if t.stride(1) == 1 or t.shape[1] == 1:
        return t
    return t.contiguous(memory_format=torch.channels_last)


def _pair(stride) -> tuple[int, int]:
    if isinstance(stride, int):
        stride = (stride, stride)
    if not (isinstance(stride, (tuple, list)) and len(stride) == 2 and all(isinstance(s, int) and s >= 1
                                                                            for s in stride)):
        raise ValueError(f"stride must be a positive int or a pair of them, got {stride!r}")
    return int(stride[0]), int(stride[1])


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


class _Problem:
    """Shapes, checked inputs and the pixel plan shared by the forward and backward launches."""

    def __init__(self, x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, stride) -> None:
        for name, t in (("x", x), ("guide", guide), ("coef", coef), ("kernels", kernels)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
        if x.dim() != 4 or guide.dim() != 4 or coef.dim() != 3 or kernels.dim() != 4:
            raise ValueError(f"need x (B, C, H, W), guide (B, m, Ho, Wo), coef (B, m, T), kernels (M, T, O, C); got "
                             f"shapes {tuple(x.shape)}, {tuple(guide.shape)}, {tuple(coef.shape)}, "
                             f"{tuple(kernels.shape)}")
        self.stride = _pair(stride)
        self.batch, self.channels, self.height, self.width = x.shape
        _, self.regions, self.out_h, self.out_w = guide.shape
        self.shared_count, self.terms, self.out_channels, kc = kernels.shape
        out_h = (self.height - 1) // self.stride[0] + 1
        out_w = (self.width - 1) // self.stride[1] + 1
        if (tuple(guide.shape) != (self.batch, self.regions, out_h, out_w)
                or tuple(coef.shape) != (self.batch, self.regions, self.terms) or kc != self.channels
                or self.shared_count not in (1, self.regions) or self.regions < 1 or self.terms < 1):
            raise ValueError(f"inconsistent shapes: x {tuple(x.shape)}, guide {tuple(guide.shape)} (expected "
                             f"(B, m, {out_h}, {out_w})), coef {tuple(coef.shape)} (expected (B, m, T)), kernels "
                             f"{tuple(kernels.shape)} (expected (m or 1, T, O, C={self.channels})), stride "
                             f"{self.stride}")
        devices = {t.device for t in (x, guide, coef, kernels)}
        if len(devices) != 1:
            raise ValueError(f"x, guide, coef and kernels must share a device, got {sorted(map(str, devices))}")
        self.device = x.device
        self.shared = self.shared_count == 1
        self.pixels = self.batch * self.out_h * self.out_w
        # The pixels the 1x1 convolution reads, as a view (a copy only for channel-strided inputs).
        self.x = _rows_layout(x if self.stride == (1, 1) else x[:, :, ::self.stride[0], ::self.stride[1]])
        self.coef = coef.float()
        self.kernels = kernels.to(x.dtype)
        self.jit = _jit(x.device)
        self.precision = _precision(x.dtype)
        self.upcast = _interpreted and x.dtype != torch.float32          # the interpreter's 16-bit tl.dot is wrong
        # Region of every pixel, pixel order (b, ho, wo): Eq.4.
        self.mask = guide.argmax(1).reshape(-1)
        if self.shared:
            self.groups, self.order, self.group_start = 1, self.mask, self.mask
        else:
            # Stable sort by region: bucket j = positions [group_start[j], group_start[j + 1]) of order, pixels in
            # (b, ho, wo) order within it. The bucket bounds stay on the device.
            sorted_regions, self.order = torch.sort(self.mask, stable=True)
            wanted = torch.arange(self.regions + 1, device=self.device, dtype=sorted_regions.dtype)
            self.group_start = torch.searchsorted(sorted_regions, wanted)
            self.groups = self.regions

    def tile_count(self, block_p: int) -> int:
        """Upper bound of the tiles over all buckets: sum_j ceil(n_j / P) <= ceil(N / P) + G - 1."""
        return _cdiv(self.pixels, block_p) + self.groups - 1

    def common(self) -> dict:
        return {"SHARED": self.shared, "PRECISION": self.precision, "UPCAST": self.upcast,
                "BLOCK_G": _pow2(self.groups + 1, 2)}

    def tiles(self, kind: str) -> dict:
        return _tiles(kind, self.precision, self.out_channels, self.channels)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def region_conv_forward(x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, stride) -> Tensor:
    """DRConv 1x1 forward (Eq.3-5): ``out[b, :, p] = sum_t coef[b, j, t] * (kernels[j or 0, t] @ x[b, :, p'])``
    with ``j = argmax_j guide[b, j, p]`` and p' the input pixel of output pixel p.

    Args:
        x: (B, C, H, W) float32 or bfloat16 (float16 works too), any strides (channel stride 1, e.g. channels_last,
            avoids a copy).
        guide: (B, m, Ho, Wo) guided feature F, Ho = ceil(H / sh), Wo = ceil(W / sw), any float dtype.
        coef: (B, m, T) coefficients (used in float32).
        kernels: (M, T, O, C) static kernels, M = m (one set per region) or M = 1 (shared by all regions); cast to
            x's dtype.
        stride: int or (sh, sw): the 1x1 convolution reads ``x[:, :, ::sh, ::sw]``.

    Returns:
        (B, O, Ho, Wo) in x's dtype, channels_last strides.
    """
    prob = _Problem(x, guide, coef, kernels, stride)
    out = x.new_empty(prob.batch, prob.out_h, prob.out_w, prob.out_channels).permute(0, 3, 1, 2)
    tiles = prob.tiles("forward")
    grid = (prob.tile_count(tiles["BLOCK_P"]), _cdiv(prob.out_channels, tiles["BLOCK_O"]))
    prob.jit.region_forward_kernel[grid](
        prob.x, prob.coef, prob.kernels, out, prob.order, prob.mask, prob.group_start,
        prob.pixels, prob.out_h * prob.out_w, prob.out_w, prob.channels, prob.out_channels, prob.terms, prob.groups,
        *prob.x.stride(), *prob.coef.stride(), *prob.kernels.stride(), *out.stride(), **prob.common(), **tiles)
    return out


def _split_count(prob: _Problem, tiles: int, programs: int) -> int:
    """Slices of each bucket's tiles for the kernel gradient (shapes only, never the data)."""
    if SPLIT_K is not None:
        return max(1, int(SPLIT_K))
    if prob.device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(prob.device).multi_processor_count
    else:
        target = 1
    split = min(_cdiv(target, programs), max(1, tiles // (prob.groups * MIN_TILES_PER_SLICE)))
    per_split = prob.groups * prob.terms * prob.out_channels * prob.channels * 4
    return max(1, min(split, KERNEL_GRAD_MAX_PARTIAL_BYTES // per_split))


def region_conv_backward(grad_out: Tensor, x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, stride,
                         needs=(True, True, True, True)):
    """Gradients of ``region_conv_forward`` (hard mask) and the per-region term of paper Eq.7.

    Args:
        grad_out: (B, O, Ho, Wo) dL/dY, any float dtype and strides (cast to x's dtype for the GEMMs; channel stride
            1 avoids a copy).
        x, guide, coef, kernels, stride: as for ``region_conv_forward``.
        needs: four bools, which of (grad_x, eq7, grad_coef, grad_kernels) to compute.

    Returns:
        (grad_x, eq7, grad_coef, grad_kernels), None where not needed:
        grad_x (B, C, H, W) in x's dtype, channels_last strides, zero on the pixels the stride skips;
        eq7 (B, m, Ho, Wo) float32, contiguous: ``<dY_p, W_bj x_p>`` for every region j
        (``facerec.nn.functional.softmax_straight_through_grad(guide, eq7)`` is then the guide's gradient, Eq.8);
        grad_coef (B, m, T) float32; grad_kernels (M, T, O, C) in kernels' dtype (summed over regions for M = 1).
    """
    prob = _Problem(x, guide, coef, kernels, stride)
    if not isinstance(grad_out, Tensor) or tuple(grad_out.shape) != (prob.batch, prob.out_channels, prob.out_h,
                                                                     prob.out_w):
        raise ValueError(f"grad_out must be a tensor of shape {(prob.batch, prob.out_channels, prob.out_h, prob.out_w)}"
                         f", got {tuple(getattr(grad_out, 'shape', ()))} ({type(grad_out).__name__})")
    if len(needs) != 4:
        raise ValueError(f"needs must hold four bools (grad_x, eq7, grad_coef, grad_kernels), got {needs!r}")
    need_x, need_eq7, need_coef, need_kernels = (bool(n) for n in needs)
    dy = _rows_layout(grad_out)
    grad_x = eq7 = grad_coef = grad_kernels = None
    hw = prob.out_h * prob.out_w
    dims = (prob.pixels, hw, prob.out_w, prob.channels, prob.out_channels, prob.terms)
    if need_x or need_eq7 or need_coef:
        tiles = prob.tiles("backward")
        c_blocks = _cdiv(prob.channels, tiles["BLOCK_C"])
        unused = torch.empty(0, device=prob.device, dtype=torch.float32)
        grad_rows = unused
        if need_x:
            make = x.new_empty if prob.stride == (1, 1) else x.new_zeros
            grad_x = make(prob.batch, prob.height, prob.width, prob.channels).permute(0, 3, 1, 2)
            grad_rows = grad_x[:, :, ::prob.stride[0], ::prob.stride[1]]
        eq7_part = (torch.empty(c_blocks, prob.batch, prob.regions, prob.out_h, prob.out_w, device=prob.device)
                    if need_eq7 else unused)
        h_part = torch.empty(c_blocks, prob.pixels, prob.terms, device=prob.device) if need_coef else unused
        grid = (prob.tile_count(tiles["BLOCK_P"]), c_blocks)
        prob.jit.region_backward_kernel[grid](
            prob.x, dy, prob.coef, prob.kernels, grad_rows, eq7_part, h_part, prob.order, prob.mask,
            prob.group_start, *dims, prob.groups, prob.regions,
            *prob.x.stride(), *dy.stride(), *prob.coef.stride(), *prob.kernels.stride(),
            *(grad_rows.stride() if need_x else (0, 0, 0, 0)),
            NEED_DX=need_x, NEED_EQ7=need_eq7, NEED_H=need_coef, BLOCK_M=_pow2(prob.regions),
            BLOCK_T=_pow2(prob.terms), **prob.common(), **tiles)
        if need_eq7:
            eq7 = eq7_part[0] if c_blocks == 1 else eq7_part.sum(0)
        if need_coef:
            h = h_part[0] if c_blocks == 1 else h_part.sum(0)
            grad_coef = torch.empty(prob.batch, prob.regions, prob.terms, device=prob.device)
            prob.jit.region_coef_grad_kernel[(prob.batch,)](
                h, prob.mask, grad_coef, hw, prob.regions, prob.terms, BLOCK_M=_pow2(prob.regions),
                BLOCK_T=_pow2(prob.terms), **TILES["coef_grad"])
            grad_coef = grad_coef.to(coef.dtype)
    if need_kernels:
        tiles = prob.tiles("kernel_grad")
        blocks_oc = _cdiv(prob.out_channels, tiles["BLOCK_O"]) * _cdiv(prob.channels, tiles["BLOCK_C"])
        split = _split_count(prob, _cdiv(prob.pixels, tiles["BLOCK_P"]), prob.groups * prob.terms * blocks_oc)
        part = torch.empty(prob.groups, split, prob.terms, prob.out_channels, prob.channels, device=prob.device)
        grid = (prob.groups * split, prob.terms, blocks_oc)
        prob.jit.region_kernel_grad_kernel[grid](
            prob.x, dy, prob.coef, part, prob.order, prob.mask, prob.group_start, *dims, split,
            *prob.x.stride(), *dy.stride(), *prob.coef.stride(),
            SHARED=prob.shared, PRECISION=prob.precision, UPCAST=prob.upcast, **tiles)
        grad_kernels = (part[:, 0] if split == 1 else part.sum(1)).to(kernels.dtype)
    return grad_x, eq7, grad_coef, grad_kernels
