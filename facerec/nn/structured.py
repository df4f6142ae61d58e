"""Structured DRConv for the paper generator (Chen et al., CVPR 2021, section 3.3, Fig. 2b), 1x1 kernels.

The paper generator makes every region's filter an affine mix of static kernels: with hidden width
h = t*m, ``W_bj = A_j + sum_t s_bjt V_jt`` where ``A_j`` (the generator's ``shared`` filter plus the grouped
expand conv's bias) and ``V_jt`` (its weights) are static and ``s_bjt = sigmoid(...)`` are per-sample
coefficients. ``paper_region_conv2d`` computes the DRConv output ``Y_p = W_{b, M_p} x_p`` (M_p = argmax_j F_p,
ties to the lowest index) from that structure without the B*m*O*C tensor of per-sample filters:

* forward: pixels of the whole batch sorted by region; one GEMM per region against the stacked static kernels
  ``[A_j; V_j1; ...; V_jt]`` ((1+t)*O outputs: (1+t) conv units of MACs in m large GEMMs, not B*m small ones),
  then ``y = U_A + sum_t s_bjt U_Vt`` per pixel;
* static-kernel gradients: ``dA_j = sum_{p in j} dY_p x_p^T`` and ``dV_jt = sum_{p in j} s_bjt dY_p x_p^T``, one
  grouped GEMM over regions ((1+t) conv units); coefficient gradient ``ds_bjt = sum_{p in (b, j)}
  <dY_p, V_jt x_p>`` from the saved ``U_V`` (no GEMM);
* input gradient and the paper's Eq.7 ``g_j(p) = <dY_p, W_bj x_p>`` for every region j: ``T_j(p) = W_bj^T dY_p``
  in one batched GEMM per chunk of samples (m conv units, the floor for Eq.7), with the chunk's filters built
  in cache-sized pieces (at most ``FILTER_CHUNK_ELEMENTS`` values) and never for the whole batch; the pixel's
  own-region slice of T is dX. Then Eq.8 (softmax straight-through) for the guide.

Exactness is that of ``facerec.nn.functional.region_conv2d`` with the materialised filters (same hard-mask
value and gradients; tests compare both against float64 loop references).
"""
from __future__ import annotations

import torch
from torch import Tensor

from facerec.nn import _onednn
from facerec.nn._grouped import _aligned, _grouped_mm_ok
from facerec.nn.functional import _pair, guided_mask, project_back, softmax_straight_through_grad

__all__ = ["paper_region_conv2d", "FILTER_CHUNK_ELEMENTS"]

# Largest piece of per-sample filters (values) built at once in the backward: 4M floats = 16 MB.
FILTER_CHUNK_ELEMENTS = 1 << 22
# The backward builds per-sample filters (m conv units for Eq.7) when a sample has more than this many pixels
# per region, else it multiplies by the stacked static kernels ((1+t) m units, no per-sample filter at all).
STACKED_EQ7_MAX_PIXELS_PER_REGION = 8


def _use_grouped_mm(*tensors: Tensor) -> bool:
    """One torch._grouped_mm call (no host sync) where it runs: CPU float32/bf16/fp16 with 16-byte aligned
    strides, CUDA bf16 on compute capability 9.0+. Elsewhere (float64, older GPUs, CUDA float32) the m region
    GEMMs are plain mm calls: m calls per pass, not B*m, and one host sync for the region sizes."""
    t = tensors[0]
    aligned = all(_grouped_mm_ok(x.dtype, x.shape[-2], x.shape[-1]) and _aligned(x) for x in tensors)
    if t.device.type == "cuda":
        return aligned and t.dtype == torch.bfloat16 and torch.cuda.get_device_capability(t.device) >= (9, 0)
    return aligned and t.device.type == "cpu"


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



def _project_back_per_sample(static: Tensor, dynamic: Tensor, coef: Tensor, dy_rows: Tensor, rows: Tensor | None,
                             mask: Tensor, pixels: int) -> tuple[Tensor, Tensor | None]:
    """dX rows and Eq.7 from T_j(p) = W_bj^T dY_p, one bmm per chunk of samples with their filters built in
    pieces of at most FILTER_CHUNK_ELEMENTS (m conv units of MACs)."""
    regions, terms, out_channels, channels = dynamic.shape
    batch = coef.shape[0]
    side_static = static.transpose(0, 1).contiguous().unsqueeze(0)                      # (1, O, m, C)
    side_dynamic = dynamic.permute(1, 2, 0, 3).contiguous().unsqueeze(1)               # (t, 1, O, m, C)

    def filters_side_by_side(start: int, stop: int) -> Tensor:
        """(size, O, m*C): W_bj laid side by side for samples [start, stop)."""
        part = coef[start:stop].to(static.dtype).transpose(1, 2)                        # (size, t, m)
        w = torch.addcmul(side_static, part[:, 0].view(-1, 1, regions, 1), side_dynamic[0])
        for k in range(1, terms):
            w.addcmul_(part[:, k].view(-1, 1, regions, 1), side_dynamic[k])
        return w.reshape(stop - start, out_channels, regions * channels)

    static_t = static.transpose(1, 2).contiguous().unsqueeze(0)                          # (1, m, C, O)
    dynamic_t = dynamic.permute(1, 0, 3, 2).contiguous().unsqueeze(1)                   # (t, 1, m, C, O)

    def filters_transposed(start: int, stop: int) -> Tensor:
        """(size, m*C, O): W_bj^T stacked for samples [start, stop) (the oneDNN layout)."""
        part = coef[start:stop].to(static.dtype).transpose(1, 2)                        # (size, t, m)
        w = torch.addcmul(static_t, part[:, 0].view(-1, regions, 1, 1), dynamic_t[0])
        for k in range(1, terms):
            w.addcmul_(part[:, k].view(-1, regions, 1, 1), dynamic_t[k])
        return w.reshape(stop - start, regions * channels, out_channels)

    chunk = max(1, FILTER_CHUNK_ELEMENTS // (regions * out_channels * channels))
    return project_back(batch, pixels, regions, out_channels, channels, filters_side_by_side, dy_rows, rows, mask,
                        rows is not None, chunk, transposed_filters_for=filters_transposed)


def _project_back_stacked(static: Tensor, dynamic: Tensor, coef: Tensor, dy_rows: Tensor, rows: Tensor | None,
                          mask: Tensor, pixels: int) -> tuple[Tensor, Tensor | None]:
    """dX rows and Eq.7 without per-sample filters: Q = dY [A_1..A_m | V_11..V_mt] ((1+t) m conv units in a few
    large GEMMs over row chunks), then g_j(p) = <Q_A,j(p) + sum_t s_bjt Q_Vt,j(p), x_p> and dX_p the same sum
    at j = M_p. Cheaper than per-sample filters when a sample has few pixels (7x7: building B*m*O*C values
    costs more than the extra m units)."""
    regions, terms, out_channels, channels = dynamic.shape
    n = dy_rows.shape[0]
    kernels = torch.cat([static.unsqueeze(1), dynamic], 1)                                # (m, 1+t, O, C)
    per_row = (1 + terms) * regions * channels
    chunk = max(pixels, (FILTER_CHUNK_ELEMENTS // per_row) // pixels * pixels)
    if _onednn.worth_it(dy_rows, min(chunk, n) * per_row * out_channels):
        side_t = kernels.permute(1, 0, 3, 2).reshape(per_row, out_channels)              # ((1+t)mC, O)

        def project(d: Tensor) -> Tensor:
            return _onednn.rows_matmul(d, side_t)
    else:
        side = kernels.permute(2, 1, 0, 3).reshape(out_channels, per_row)

        def project(d: Tensor) -> Tensor:
            return torch.mm(d, side)
    need_eq7 = rows is not None
    grad_rows = dy_rows.new_empty(n, channels)
    eq7 = dy_rows.new_empty(n, regions) if need_eq7 else None
    sample = torch.arange(n, device=dy_rows.device) // pixels
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        q = project(dy_rows[lo:hi]).view(hi - lo, 1 + terms, regions, channels)
        row_coef = coef.index_select(0, sample[lo:hi]).to(q.dtype).transpose(1, 2)       # (rows, t, m)
        t_all = torch.addcmul(q[:, 0], row_coef[:, 0].unsqueeze(-1), q[:, 1])           # (rows, m, C)
        for k in range(1, terms):
            t_all.addcmul_(row_coef[:, k].unsqueeze(-1), q[:, 1 + k])
        own = mask[lo:hi].view(-1, 1, 1).expand(-1, 1, channels)
        grad_rows[lo:hi] = t_all.gather(1, own).view(hi - lo, channels)
        if need_eq7:
            eq7[lo:hi] = torch.bmm(t_all, rows[lo:hi].unsqueeze(-1)).view(hi - lo, regions)
    return grad_rows, eq7


class _PaperRegionConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, guide, coef, static, dynamic, stride):
        x = input if stride == (1, 1) else input[:, :, ::stride[0], ::stride[1]]
        batch, channels, out_h, out_w = x.shape
        regions, terms, out_channels = dynamic.shape[0], dynamic.shape[1], static.shape[1]
        pixels = out_h * out_w
        rows = x.permute(0, 2, 3, 1).reshape(batch * pixels, channels)
        mask = guided_mask(guide).reshape(-1)
        sorted_mask, perm = torch.sort(mask, stable=True)
        counts_t = torch.bincount(mask, minlength=regions)
        offs = counts_t.cumsum(0).to(torch.int32)
        sorted_rows = rows.index_select(0, perm)
        group = torch.div(perm, pixels, rounding_mode="floor") * regions + sorted_mask
        row_coef = coef.reshape(batch * regions, terms).index_select(0, group)          # (N, t)
        u, u_parts = None, None
        if _onednn.worth_it(sorted_rows, sorted_rows.shape[0] // regions * (1 + terms) * out_channels * channels):
            # oneDNN (see facerec.nn._onednn): one GEMM per region against its stacked kernels [A_j; V_j1; ...],
            # (n_j, (1+t)O) per region, combined in place; the per-region results are kept for the backward.
            counts = counts_t.tolist()
            kernels = torch.cat([static.unsqueeze(1), dynamic], 1).reshape(regions, (1 + terms) * out_channels,
                                                                           channels)
            y = sorted_rows.new_empty(sorted_rows.shape[0], out_channels)
            u_parts, start = [], 0
            for j, n in enumerate(counts):
                part = _onednn.rows_matmul(sorted_rows[start:start + n], kernels[j]).view(n, 1 + terms,
                                                                                         out_channels)
                torch.addcmul(part[:, 0], row_coef[start:start + n, :1], part[:, 1], out=y[start:start + n])
                for k in range(1, terms):
                    y[start:start + n].addcmul_(row_coef[start:start + n, k:k + 1], part[:, 1 + k])
                u_parts.append(part[:, 1:])
                start += n
        else:
            # One GEMM per kernel family (static, then each dynamic term), each grouped by region: (N, O) results,
            # no concatenated weight copy; y = U_A + sum_t s_t U_Vt in place.
            kernels = [static] + [dynamic[:, k] for k in range(terms)]
            grouped = _use_grouped_mm(sorted_rows, *(k.transpose(1, 2) for k in kernels))
            counts = None if grouped else counts_t.tolist()
            y = _region_matmul(sorted_rows, static.transpose(1, 2), counts, offs)
            dyn = [_region_matmul(sorted_rows, dynamic[:, k].transpose(1, 2), counts, offs) for k in range(terms)]
            for k in range(terms):
                y.addcmul_(row_coef[:, k:k + 1], dyn[k])
            u = dyn[0] if terms == 1 else torch.stack(dyn, 1)                              # (N, [t,] O)
        # Back to pixel order with a gather (index_copy_ runs single-threaded and ~4x slower on CPU).
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        out_rows = y.index_select(0, inverse)
        ctx.save_for_backward(input, guide, coef, static, dynamic, mask, perm, group, offs, u, row_coef)
        ctx.counts, ctx.stride, ctx.u_parts = counts, stride, u_parts
        # Pixel rows are channels_last memory; returned as is (no copy), as region_conv2d does.
        return out_rows.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        input, guide, coef, static, dynamic, mask, perm, group, offs, u, row_coef = ctx.saved_tensors
        stride, counts = ctx.stride, ctx.counts
        need_input, need_guide, need_coef, need_static, need_dynamic = ctx.needs_input_grad[:5]
        x = input if stride == (1, 1) else input[:, :, ::stride[0], ::stride[1]]
        batch, channels, out_h, out_w = x.shape
        regions, terms, out_channels = dynamic.shape[0], dynamic.shape[1], static.shape[1]
        pixels = out_h * out_w
        grad_out = grad_out.to(static.dtype)
        dy_rows = grad_out.permute(0, 2, 3, 1).reshape(batch * pixels, out_channels)
        rows = x.permute(0, 2, 3, 1).reshape(batch * pixels, channels)
        grad_input = grad_guide = grad_coef = grad_static = grad_dynamic = None
        if need_coef or need_static or need_dynamic:
            sorted_dy = dy_rows.index_select(0, perm)
            if need_coef:
                if ctx.u_parts is None:
                    dots = (sorted_dy.unsqueeze(1) * u.view(-1, terms, out_channels)).sum(-1)
                else:
                    dots, start = sorted_dy.new_empty(sorted_dy.shape[0], terms), 0
                    for part in ctx.u_parts:
                        n = part.shape[0]
                        torch.sum(sorted_dy[start:start + n].unsqueeze(1) * part, -1, out=dots[start:start + n])
                        start += n
                grad_coef = dots.new_zeros(batch * regions, terms).index_add_(0, group, dots)
                grad_coef = grad_coef.view(coef.shape).to(coef.dtype)
            if need_static or need_dynamic:
                scaled = [sorted_dy] + [sorted_dy * row_coef[:, k:k + 1] for k in range(terms)]
                left = torch.cat(scaled, 1)                                              # (N, (1+t)O)
                grad = _region_outer(left, rows.index_select(0, perm), counts, offs, regions)
                grad = grad.view(regions, 1 + terms, out_channels, channels)
                grad_static = grad[:, 0] if need_static else None
                grad_dynamic = grad[:, 1:] if need_dynamic else None
        if need_input or need_guide:
            rows_eq7 = rows if need_guide else None
            if pixels <= STACKED_EQ7_MAX_PIXELS_PER_REGION * regions:
                grad_rows, eq7 = _project_back_stacked(static, dynamic, coef, dy_rows, rows_eq7, mask, pixels)
            else:
                grad_rows, eq7 = _project_back_per_sample(static, dynamic, coef, dy_rows, rows_eq7, mask, pixels)
            if need_input:
                dx = grad_rows.view(batch, out_h, out_w, channels).permute(0, 3, 1, 2)
                if stride == (1, 1):
                    grad_input = dx
                else:
                    grad_input = dx.new_zeros(input.shape)
                    grad_input[:, :, ::stride[0], ::stride[1]] = dx
            if need_guide:
                eq7 = eq7.view(batch, out_h, out_w, regions).permute(0, 3, 1, 2)
                grad_guide = softmax_straight_through_grad(guide, eq7)
        return grad_input, grad_guide, grad_coef, grad_static, grad_dynamic, None


def paper_region_conv2d(input: Tensor, guide: Tensor, coef: Tensor, static: Tensor, dynamic: Tensor,
                        stride=1) -> Tensor:
    """1x1 DRConv with filters ``W_bj = static_j + sum_t coef[b, j, t] dynamic[j, t]`` (never materialised).

    Args:
        input: (B, C, H, W).
        guide: (B, m, Ho, Wo), the guided feature F (Ho, Wo = the strided input grid).
        coef: (B, m, t): per-sample coefficients (the paper generator's sigmoid outputs, t = h / m).
        static: (m, O, C): per-region static kernel (the generator's ``shared`` + expand bias).
        dynamic: (m, t, O, C): per-region kernels scaled by coef (the generator's expand weights).
        stride: int or pair (1x1 kernel, no padding).

    Returns:
        (B, O, Ho, Wo) with channels_last strides, equal to ``region_conv2d(input, filters, guide, stride)`` with
        ``filters[b, j] = static[j] + sum_t coef[b, j, t] dynamic[j, t]``. Under autocast the input and kernels are
        cast to the autocast dtype; the Eq.8 softmax runs in float32.
    """
    stride = _pair(stride, "stride")
    if input.dim() != 4 or guide.dim() != 4 or coef.dim() != 3 or static.dim() != 3 or dynamic.dim() != 4:
        raise ValueError(f"expected input (B, C, H, W), guide (B, m, Ho, Wo), coef (B, m, t), static (m, O, C), "
                         f"dynamic (m, t, O, C); got {tuple(input.shape)}, {tuple(guide.shape)}, "
                         f"{tuple(coef.shape)}, {tuple(static.shape)}, {tuple(dynamic.shape)}")
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    batch, channels, height, width = input.shape
    regions, out_channels = static.shape[0], static.shape[1]
    out_h, out_w = (height - 1) // stride[0] + 1, (width - 1) // stride[1] + 1
    if (tuple(dynamic.shape[:1]) + tuple(dynamic.shape[2:]) != (regions, out_channels, channels)
            or static.shape[2] != channels or tuple(coef.shape[:2]) != (batch, regions)
            or coef.shape[2] != dynamic.shape[1]):
        raise ValueError(f"shapes do not fit: input {tuple(input.shape)}, coef {tuple(coef.shape)}, static "
                         f"{tuple(static.shape)}, dynamic {tuple(dynamic.shape)}: need coef (B, m, t), static "
                         f"(m, O, C), dynamic (m, t, O, C)")
    if tuple(guide.shape) != (batch, regions, out_h, out_w):
        raise ValueError(f"guide must have shape (B, m, Ho, Wo) = {(batch, regions, out_h, out_w)}, got "
                         f"{tuple(guide.shape)}")
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        input, coef, static, dynamic = (t.to(dtype) for t in (input, coef, static, dynamic))
        with torch.autocast(device_type, enabled=False):
            return _PaperRegionConvFunction.apply(input, guide, coef, static, dynamic, stride)
    dtype = input.dtype
    if coef.dtype != dtype or static.dtype != dtype or dynamic.dtype != dtype:
        raise TypeError(f"input, coef, static and dynamic must share a dtype outside autocast, got {dtype}, "
                        f"{coef.dtype}, {static.dtype}, {dynamic.dtype}")
    return _PaperRegionConvFunction.apply(input, guide, coef, static, dynamic, stride)
