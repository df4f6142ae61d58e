"""Structured DRConv, 1x1 kernels: filters that are mixes of static kernels (Chen et al., CVPR 2021, section 3.3).

Both filter generators make every region's filter a mix of static kernels with per-sample coefficients,
``W_bj = [A_j +] sum_t c_bjt K_jt``: the paper generator (Fig. 2b; h = t*m hidden units) has ``A_j`` (its ``shared``
filter plus the grouped expand conv's bias), ``K_jt = V_jt`` (its weights) and ``c_bjt = s_bjt = sigmoid(...)``; the
basis generator has no ``A``, kernels shared by all regions and routing coefficients. ``structured_region_conv2d``
computes the DRConv output ``Y_p = W_{b, M_p} x_p`` (M_p = argmax_j F_p, ties to the lowest index) from that
structure without the B*m*O*C tensor of per-sample filters:

* forward: pixels of the whole batch sorted by region; one GEMM per region against the stacked static kernels
  ``[A_j; K_j1; ...; K_jt]`` ((1+t)*O outputs: (1+t) conv units of MACs in m large GEMMs, not B*m small ones),
  then ``y = U_A + sum_t c_bjt U_t`` per pixel;
* static-kernel gradients: ``dA_j = sum_{p in j} dY_p x_p^T`` and ``dK_jt = sum_{p in j} c_bjt dY_p x_p^T``, one
  grouped GEMM over regions ((1+t) conv units); coefficient gradient ``dc_bjt = sum_{p in (b, j)}
  <dY_p, K_jt x_p>`` from the saved ``U`` (no GEMM);
* input gradient and the paper's Eq.7 ``g_j(p) = <dY_p, W_bj x_p>`` for every region j: ``T_j(p) = W_bj^T dY_p``
  in one batched GEMM per chunk of samples (m conv units, the floor for Eq.7), with the chunk's filters built
  in cache-sized pieces (at most ``FILTER_CHUNK_ELEMENTS`` values) and never for the whole batch, or, for few
  pixels per region (``facerec.nn.paths.stacked_eq7``), products with the stacked static kernels; the pixel's
  own-region slice of T is dX. Then Eq.8 (softmax straight-through) for the guide.

Region GEMMs run through oneDNN on CPU float32 when large enough (``facerec.nn.paths.use_onednn_gemm``), else as
one ``torch._grouped_mm`` call where it runs without a host sync (``facerec.nn._grouped.grouped_mm_ok``), else as m
``mm`` calls after one host sync for the region sizes. Exactness is that of ``facerec.nn.functional.region_conv2d``
with the materialised filters (tests compare both against float64 loop references).
"""
from __future__ import annotations

import torch
from torch import Tensor

from facerec.nn import _onednn, paths
from facerec.nn._grouped import grouped_mm_ok
from facerec.nn.functional import _pair, guided_mask, project_back, softmax_straight_through_grad

__all__ = ["paper_region_conv2d", "structured_region_conv2d", "FILTER_CHUNK_ELEMENTS"]

# Largest piece of per-sample filters (values) built at once in the backward: 4M floats = 16 MB.
FILTER_CHUNK_ELEMENTS = 1 << 22


def _region_matmul(rows: Tensor, weights: Tensor, counts: list[int] | None, offs: Tensor) -> Tensor:
    """rows (N, K) sorted by region, weights (m, K, M) -> (N, M): row i times its region's weights."""
    if counts is None:
        return torch._grouped_mm(rows, weights, offs=offs)
    out = rows.new_empty(rows.shape[0], weights.shape[2])
    start = 0
    for j, n in enumerate(counts):
        if n:
            torch.mm(rows[start:start + n], weights[j], out=out[start:start + n])
            start += n
    return out


def _region_outer(left: Tensor, right: Tensor, counts: list[int] | None, offs: Tensor, regions: int) -> Tensor:
    """left (N, K), right (N, M), rows sorted by region -> (m, K, M): per-region sums of left_i^T right_i."""
    if counts is None:
        return torch._grouped_mm(left.t(), right, offs=offs)
    out = left.new_zeros(regions, left.shape[1], right.shape[1])
    start = 0
    for j, n in enumerate(counts):
        if n:
            torch.mm(left[start:start + n].t(), right[start:start + n], out=out[j])
            start += n
    return out


def _mix(coef_parts, parts, static_part: Tensor | None) -> Tensor:
    """``static_part + sum_k coef_parts[k] * parts[k]`` (``static_part`` may be None), a new tensor."""
    if static_part is None:
        out = parts[0] * coef_parts[0]
    else:
        out = torch.addcmul(static_part, coef_parts[0], parts[0])
    for k in range(1, len(parts)):
        out.addcmul_(coef_parts[k], parts[k])
    return out


def _project_back_per_sample(static: Tensor | None, kernels: Tensor, coef: Tensor, dy_rows: Tensor,
                             rows: Tensor | None, mask: Tensor, pixels: int) -> tuple[Tensor, Tensor | None]:
    """dX rows and Eq.7 from T_j(p) = W_bj^T dY_p, one bmm per chunk of samples with their filters built in
    pieces of at most FILTER_CHUNK_ELEMENTS (m conv units of MACs)."""
    regions, terms, out_channels, channels = kernels.shape
    batch = coef.shape[0]
    side_static = None if static is None else static.transpose(0, 1).contiguous().unsqueeze(0)   # (1, O, m, C)
    side_kernels = kernels.permute(1, 2, 0, 3).contiguous().unsqueeze(1)               # (T, 1, O, m, C)
    static_t = None if static is None else static.transpose(1, 2).contiguous().unsqueeze(0)       # (1, m, C, O)
    kernels_t = kernels.permute(1, 0, 3, 2).contiguous().unsqueeze(1)                  # (T, 1, m, C, O)

    def filters_side_by_side(start: int, stop: int) -> Tensor:
        """(size, O, m*C): W_bj laid side by side for samples [start, stop)."""
        part = coef[start:stop].to(kernels.dtype).transpose(1, 2)                       # (size, T, m)
        w = _mix([part[:, k].view(-1, 1, regions, 1) for k in range(terms)], side_kernels, side_static)
        return w.reshape(stop - start, out_channels, regions * channels)

    def filters_transposed(start: int, stop: int) -> Tensor:
        """(size, m*C, O): W_bj^T stacked for samples [start, stop) (the oneDNN layout)."""
        part = coef[start:stop].to(kernels.dtype).transpose(1, 2)                       # (size, T, m)
        w = _mix([part[:, k].view(-1, regions, 1, 1) for k in range(terms)], kernels_t, static_t)
        return w.reshape(stop - start, regions * channels, out_channels)

    chunk = max(1, FILTER_CHUNK_ELEMENTS // (regions * out_channels * channels))
    return project_back(batch, pixels, regions, out_channels, channels, filters_side_by_side, dy_rows, rows, mask,
                        rows is not None, chunk, transposed_filters_for=filters_transposed)


def _project_back_stacked(static: Tensor | None, kernels: Tensor, coef: Tensor, dy_rows: Tensor,
                          rows: Tensor | None, mask: Tensor, pixels: int) -> tuple[Tensor, Tensor | None]:
    """dX rows and Eq.7 without per-sample filters: Q = dY [A_1..A_m | K_11..K_mt] ((1+t) m conv units in a few
    large GEMMs over row chunks), then g_j(p) = <Q_A,j(p) + sum_t c_bjt Q_t,j(p), x_p> and dX_p the same sum
    at j = M_p. Cheaper than per-sample filters when a sample has few pixels (7x7: building B*m*O*C values
    costs more than the extra m units)."""
    regions, terms, out_channels, channels = kernels.shape
    first = 0 if static is None else 1
    n = dy_rows.shape[0]
    stacked = kernels if static is None else torch.cat([static.unsqueeze(1), kernels], 1)   # (m, S+T, O, C)
    per_row = (first + terms) * regions * channels
    chunk = max(pixels, (FILTER_CHUNK_ELEMENTS // per_row) // pixels * pixels)
    if paths.use_onednn_gemm(dy_rows, min(chunk, n) * per_row * out_channels):
        side_t = stacked.permute(1, 0, 3, 2).reshape(per_row, out_channels)               # ((S+T)mC, O)

        def project(d: Tensor) -> Tensor:
            return _onednn.rows_matmul(d, side_t)
    else:
        side = stacked.permute(2, 1, 0, 3).reshape(out_channels, per_row)

        def project(d: Tensor) -> Tensor:
            return torch.mm(d, side)
    need_eq7 = rows is not None
    grad_rows = dy_rows.new_empty(n, channels)
    eq7 = dy_rows.new_empty(n, regions) if need_eq7 else None
    sample = torch.arange(n, device=dy_rows.device) // pixels
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        q = project(dy_rows[lo:hi]).view(hi - lo, first + terms, regions, channels)
        row_coef = coef.index_select(0, sample[lo:hi]).to(q.dtype).transpose(1, 2)       # (rows, T, m)
        t_all = _mix([row_coef[:, k].unsqueeze(-1) for k in range(terms)], q[:, first:].unbind(1),
                     q[:, 0] if first else None)                                         # (rows, m, C)
        own = mask[lo:hi].view(-1, 1, 1).expand(-1, 1, channels)
        grad_rows[lo:hi] = t_all.gather(1, own).view(hi - lo, channels)
        if need_eq7:
            eq7[lo:hi] = torch.bmm(t_all, rows[lo:hi].unsqueeze(-1)).view(hi - lo, regions)
    return grad_rows, eq7


def _forward_gemms(sorted_rows: Tensor, row_coef: Tensor, static: Tensor | None, kernels: Tensor, counts_t: Tensor,
                   offs: Tensor):
    """y (N, O) for rows sorted by region, the per-term results U kept for the coefficient gradient (one (N, T, O)
    tensor or, on the oneDNN branch, per-region pieces), and the region sizes (None when grouped GEMMs ran)."""
    regions, terms, out_channels, channels = kernels.shape
    first = 0 if static is None else 1
    n = sorted_rows.shape[0]
    if paths.use_onednn_gemm(sorted_rows, n // regions * (first + terms) * out_channels * channels):
        # oneDNN (see facerec.nn._onednn): one GEMM per region against its stacked kernels [A_j; K_j1; ...],
        # (n_j, (S+T)O) per region, combined in place; the per-region results are kept for the backward.
        counts = counts_t.tolist()
        stacked = kernels if static is None else torch.cat([static.unsqueeze(1), kernels], 1)
        stacked = stacked.reshape(regions, (first + terms) * out_channels, channels)
        y = sorted_rows.new_empty(n, out_channels)
        u_parts, start = [], 0
        for j, size in enumerate(counts):
            part = _onednn.rows_matmul(sorted_rows[start:start + size], stacked[j]).view(size, first + terms,
                                                                                       out_channels)
            rc, ys = row_coef[start:start + size], y[start:start + size]
            if first:
                torch.addcmul(part[:, 0], rc[:, :1], part[:, 1], out=ys)
            else:
                torch.mul(part[:, 0], rc[:, :1], out=ys)
            for k in range(1, terms):
                ys.addcmul_(rc[:, k:k + 1], part[:, first + k])
            u_parts.append(part[:, first:])
            start += size
        return y, u_parts, counts
    # One GEMM per kernel family (static, then each term), each grouped by region: (N, O) results, no concatenated
    # weight copy; y = U_A + sum_t c_t U_t in place.
    weights = ([] if static is None else [static]) + [kernels[:, k] for k in range(terms)]
    grouped = grouped_mm_ok(sorted_rows.device, sorted_rows.dtype, channels, out_channels,
                            tensors=(sorted_rows, *(w.transpose(1, 2) for w in weights)))
    counts = None if grouped else counts_t.tolist()
    static_u = None if static is None else _region_matmul(sorted_rows, static.transpose(1, 2), counts, offs)
    dyn = [_region_matmul(sorted_rows, kernels[:, k].transpose(1, 2), counts, offs) for k in range(terms)]
    if static_u is None:
        y = dyn[0] * row_coef[:, :1]
    else:
        y = static_u.addcmul_(row_coef[:, :1], dyn[0])
    for k in range(1, terms):
        y.addcmul_(row_coef[:, k:k + 1], dyn[k])
    return y, dyn[0].unsqueeze(1) if terms == 1 else torch.stack(dyn, 1), counts


def _per_region(kernels: Tensor, regions: int) -> Tensor:
    """(M, T, O, C) -> (m, T, O, C): kernels shared by all regions (M = 1) copied per region."""
    return kernels if kernels.shape[0] == regions else kernels.expand(regions, -1, -1, -1).contiguous()


class _StructuredRegionConvFunction(torch.autograd.Function):
    """input (B, C, H, W), guide (B, m, Ho, Wo), coef (B, m, T), static (m, O, C) or None, kernels (M, T, O, C) with
    M = m or 1 -> (B, O, Ho, Wo). ``raw_eq7``: the guide's gradient is Eq.7 itself (for facerec.nn.ops)."""

    @staticmethod
    def forward(ctx, input, guide, coef, static, kernels, stride, raw_eq7):
        x = input if stride == (1, 1) else input[:, :, ::stride[0], ::stride[1]]
        batch, channels, out_h, out_w = x.shape
        regions, terms, out_channels = guide.shape[1], kernels.shape[1], kernels.shape[2]
        kern = _per_region(kernels, regions)
        pixels = out_h * out_w
        rows = x.permute(0, 2, 3, 1).reshape(batch * pixels, channels)
        mask = guided_mask(guide).reshape(-1)
        sorted_mask, perm = torch.sort(mask, stable=True)
        # Region ends in the sorted order without a host sync (torch.bincount on CUDA reads its maximum back).
        ends = torch.searchsorted(sorted_mask, torch.arange(regions, device=mask.device), right=True)
        offs = ends.to(torch.int32)
        counts_t = torch.diff(ends, prepend=ends.new_zeros(1))
        sorted_rows = rows.index_select(0, perm)
        group = torch.div(perm, pixels, rounding_mode="floor") * regions + sorted_mask
        row_coef = coef.reshape(batch * regions, terms).to(kern.dtype).index_select(0, group)   # (N, T)
        y, u, counts = _forward_gemms(sorted_rows, row_coef, static, kern, counts_t, offs)
        # Back to pixel order with a gather (index_copy_ runs single-threaded and ~4x slower on CPU).
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        out_rows = y.index_select(0, inverse)
        ctx.save_for_backward(input, guide, coef, static, kernels, mask, perm, group, offs,
                              None if isinstance(u, list) else u, row_coef)
        ctx.counts, ctx.stride, ctx.raw_eq7 = counts, stride, raw_eq7
        ctx.u_parts = u if isinstance(u, list) else None
        # Pixel rows are channels_last memory; returned as is (no copy), as region_conv2d does.
        return out_rows.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        input, guide, coef, static, kernels, mask, perm, group, offs, u, row_coef = ctx.saved_tensors
        stride, counts = ctx.stride, ctx.counts
        need_input, need_guide, need_coef, need_static, need_kernels = ctx.needs_input_grad[:5]
        x = input if stride == (1, 1) else input[:, :, ::stride[0], ::stride[1]]
        batch, channels, out_h, out_w = x.shape
        regions, terms, out_channels = guide.shape[1], kernels.shape[1], kernels.shape[2]
        kern = _per_region(kernels, regions)
        pixels = out_h * out_w
        dy_rows = grad_out.to(kern.dtype).permute(0, 2, 3, 1).reshape(batch * pixels, out_channels)
        rows = x.permute(0, 2, 3, 1).reshape(batch * pixels, channels)
        grad_input = grad_guide = grad_coef = grad_static = grad_kernels = None
        if need_coef or need_static or need_kernels:
            sorted_dy = dy_rows.index_select(0, perm)
            if need_coef:
                if ctx.u_parts is None:
                    dots = (sorted_dy.unsqueeze(1) * u).sum(-1)
                else:
                    dots, start = sorted_dy.new_empty(sorted_dy.shape[0], terms), 0
                    for part in ctx.u_parts:
                        n = part.shape[0]
                        torch.sum(sorted_dy[start:start + n].unsqueeze(1) * part, -1, out=dots[start:start + n])
                        start += n
                grad_coef = dots.new_zeros(batch * regions, terms).index_add_(0, group, dots)
                grad_coef = grad_coef.view(coef.shape).to(coef.dtype)
            if need_static or need_kernels:
                first = 0 if static is None else 1
                scaled = [sorted_dy] * first + [sorted_dy * row_coef[:, k:k + 1] for k in range(terms)]
                grad = _region_outer(torch.cat(scaled, 1), rows.index_select(0, perm), counts, offs, regions)
                grad = grad.view(regions, first + terms, out_channels, channels)
                grad_static = grad[:, 0] if need_static else None
                if need_kernels:
                    grad_kernels = grad[:, first:]
                    if kernels.shape[0] != regions:
                        grad_kernels = grad_kernels.sum(0, keepdim=True)
        if need_input or need_guide:
            rows_eq7 = rows if need_guide else None
            project = _project_back_stacked if paths.stacked_eq7(pixels, regions) else _project_back_per_sample
            grad_rows, eq7 = project(static, kern, coef, dy_rows, rows_eq7, mask, pixels)
            if need_input:
                dx = grad_rows.view(batch, out_h, out_w, channels).permute(0, 3, 1, 2)
                if stride == (1, 1):
                    grad_input = dx
                else:
                    grad_input = dx.new_zeros(input.shape)
                    grad_input[:, :, ::stride[0], ::stride[1]] = dx
            if need_guide:
                eq7 = eq7.view(batch, out_h, out_w, regions).permute(0, 3, 1, 2)
                grad_guide = eq7 if ctx.raw_eq7 else softmax_straight_through_grad(guide, eq7)
        return grad_input, grad_guide, grad_coef, grad_static, grad_kernels, None, None


def _check(input: Tensor, guide: Tensor, coef: Tensor, static: Tensor | None, kernels: Tensor, stride) -> None:
    if input.dim() != 4 or guide.dim() != 4 or coef.dim() != 3 or kernels.dim() != 4 or (
            static is not None and static.dim() != 3):
        raise ValueError(f"expected input (B, C, H, W), guide (B, m, Ho, Wo), coef (B, m, t), static (m, O, C), "
                         f"kernels (m, t, O, C); got {tuple(input.shape)}, {tuple(guide.shape)}, "
                         f"{tuple(coef.shape)}, {None if static is None else tuple(static.shape)}, "
                         f"{tuple(kernels.shape)}")
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    batch, channels, height, width = input.shape
    regions = guide.shape[1]
    out_channels = kernels.shape[2]
    out_h, out_w = (height - 1) // stride[0] + 1, (width - 1) // stride[1] + 1
    if (kernels.shape[0] not in (regions, 1) or kernels.shape[3] != channels
            or tuple(coef.shape[:2]) != (batch, regions) or coef.shape[2] != kernels.shape[1]
            or (static is not None and tuple(static.shape) != (regions, out_channels, channels))):
        raise ValueError(f"shapes do not fit: input {tuple(input.shape)}, guide {tuple(guide.shape)}, coef "
                         f"{tuple(coef.shape)}, static {None if static is None else tuple(static.shape)}, kernels "
                         f"{tuple(kernels.shape)}: need coef (B, m, t), static (m, O, C), kernels (m or 1, t, O, C)")
    if tuple(guide.shape) != (batch, regions, out_h, out_w):
        raise ValueError(f"guide must have shape (B, m, Ho, Wo) = {(batch, regions, out_h, out_w)}, got "
                         f"{tuple(guide.shape)}")


def _apply(input, guide, coef, static, kernels, stride, raw_eq7=False) -> Tensor:
    stride = _pair(stride, "stride")
    _check(input, guide, coef, static, kernels, stride)
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        input, coef, kernels = input.to(dtype), coef.to(dtype), kernels.to(dtype)
        static = None if static is None else static.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return _StructuredRegionConvFunction.apply(input, guide, coef, static, kernels, stride, raw_eq7)
    dtype = input.dtype
    if coef.dtype != dtype or kernels.dtype != dtype or (static is not None and static.dtype != dtype):
        raise TypeError(f"input, coef, static and kernels must share a dtype outside autocast, got {dtype}, "
                        f"{coef.dtype}, {None if static is None else static.dtype}, {kernels.dtype}")
    return _StructuredRegionConvFunction.apply(input, guide, coef, static, kernels, stride, raw_eq7)


def structured_region_conv2d(input: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, stride=1,
                             raw_eq7: bool = False) -> Tensor:
    """1x1 DRConv with filters ``W_bj = sum_t coef[b, j, t] kernels[j, t]`` (never materialised).

    Args:
        input: (B, C, H, W).
        guide: (B, m, Ho, Wo), the guided feature F (Ho, Wo = the strided input grid).
        coef: (B, m, T) per-sample coefficients.
        kernels: (m, T, O, C) per-region static kernels, or (1, T, O, C) shared by all regions (basis generator).
        stride: int or pair (1x1 kernel, no padding).
        raw_eq7: the guide's gradient is Eq.7, ``<dY_p, W_bj x_p>`` for every region (B, m, Ho, Wo), not Eq.8's
            result (``facerec.nn.ops`` applies Eq.8 itself).

    Returns:
        (B, O, Ho, Wo) with channels_last strides, equal to ``region_conv2d(input, filters, guide, stride)`` with the
        materialised filters. Under autocast the input, coefficients and kernels are cast to the autocast dtype;
        the Eq.8 softmax runs in float32.
    """
    return _apply(input, guide, coef, None, kernels, stride, raw_eq7)


def paper_region_conv2d(input: Tensor, guide: Tensor, coef: Tensor, static: Tensor, dynamic: Tensor,
                        stride=1) -> Tensor:
    """1x1 DRConv with filters ``W_bj = static_j + sum_t coef[b, j, t] dynamic[j, t]`` (the paper generator's form).

    Args:
        input: (B, C, H, W).
        guide: (B, m, Ho, Wo), the guided feature F (Ho, Wo = the strided input grid).
        coef: (B, m, t): per-sample coefficients (the paper generator's sigmoid outputs, t = h / m).
        static: (m, O, C): per-region static kernel (the generator's ``shared`` + expand bias).
        dynamic: (m, t, O, C): per-region kernels scaled by coef (the generator's expand weights).
        stride: int or pair (1x1 kernel, no padding).

    Returns:
        (B, O, Ho, Wo) with channels_last strides, as ``structured_region_conv2d``.
    """
    return _apply(input, guide, coef, static, dynamic, stride)
