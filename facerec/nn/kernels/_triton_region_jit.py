"""Triton kernels of the 1x1 region convolution (private; DRConv, Chen et al., CVPR 2021, Eq.3-8).

Imported lazily by ``facerec.nn.kernels.triton_region`` (Triton needed). Notation: pixel n = (b, ho, wo) of the
whole batch reads ``x_n = x[b, :, ho, wo]`` (C) of the strided view ``x[:, :, ::sh, ::sw]``; its region is r_n (the
argmax of the guided feature, Eq.4); region j of sample b uses ``W_bj = sum_t coef[b, j, t] K[j, t]`` (K[0, t] for
every j when the kernels are shared, SHARED).

Pixels are visited in tiles of BLOCK_P rows. Unshared kernels: pixels sorted by region (``order``, bucket j holds
positions [group_start[j], group_start[j + 1])), a tile holds rows of one bucket, so one GEMM against the bucket's
static kernels serves it and the per-row sample index only selects coefficients. Shared kernels: no sort, tiles
of consecutive pixels, the region per row only selects coefficients.
"""
import triton
import triton.language as tl


@triton.jit
def _tile_range(tile, group_start_ptr, N, G, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, SHARED: tl.constexpr):
    """Tile number -> (group, first position, end position); lo >= hi for tiles past the last bucket."""
    if SHARED:
        group = tile * 0
        lo = tile * BLOCK_P
        hi = N + lo * 0
    else:
        gi = tl.arange(0, BLOCK_G)
        in_range = gi < G
        starts = tl.load(group_start_ptr + gi, mask=in_range, other=0).to(tl.int32)
        ends = tl.load(group_start_ptr + gi + 1, mask=in_range, other=0).to(tl.int32)
        tiles = (ends - starts + BLOCK_P - 1) // BLOCK_P
        tile_end = tl.cumsum(tiles, 0)
        group = tl.sum(((tile_end <= tile) & in_range).to(tl.int32), 0)
        here = gi == group
        first_tile = tl.sum(tl.where(here, tile_end - tiles, 0), 0)
        lo = tl.sum(tl.where(here, starts, 0), 0) + (tile - first_tile) * BLOCK_P
        hi = tl.sum(tl.where(here, ends, 0), 0)
    return group, lo, hi


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b. UPCAST (Triton's interpreter only, whose 16-bit float dot is wrong): the same products in float32
    (exact for bfloat16 / float16 operands), the same float32 accumulation."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _pixels(pos, valid, order_ptr, mask_ptr, group, HW, Wo, SHARED: tl.constexpr):
    """Positions (BLOCK_P,) -> pixel index n, sample b, output row ho, column wo, region r (all (BLOCK_P,))."""
    if SHARED:
        n = pos
        region = tl.load(mask_ptr + n, mask=valid, other=0)
    else:
        n = tl.load(order_ptr + pos, mask=valid, other=0).to(tl.int32)
        region = n * 0 + group
    b = n // HW
    hw = n - b * HW
    ho = hw // Wo
    wo = hw - ho * Wo
    return n, b.to(tl.int64), ho, wo, region


@triton.jit
def region_forward_kernel(x_ptr, coef_ptr, k_ptr, out_ptr, order_ptr, mask_ptr, group_start_ptr,
                          N, HW, Wo, C, O, T, G,
                          sxb, sxc, sxh, sxw, scb, scm, sct, skm, skt, sko, skc, syb, syo, syh, syw,
                          SHARED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_P: tl.constexpr,
                          BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """y_n = sum_t coef[b, r, t] (K[k, t] @ x_n) for a tile of BLOCK_P pixels and BLOCK_O output channels.

    Grid (tiles, cdiv(O, BLOCK_O)); x is the strided view ``x[:, :, ::sh, ::sw]`` (its strides)."""
    group, lo, hi = _tile_range(tl.program_id(0), group_start_ptr, N, G, BLOCK_P, BLOCK_G, SHARED)
    if lo >= hi:
        return
    pos = lo + tl.arange(0, BLOCK_P)
    valid = pos < hi
    n, b, ho, wo, region = _pixels(pos, valid, order_ptr, mask_ptr, group, HW, Wo, SHARED)
    kreg = 0 if SHARED else group
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o < O
    x_row = x_ptr + b * sxb + ho * sxh + wo * sxw
    k_base = k_ptr + kreg * skm + o[None, :] * sko
    acc = tl.zeros((BLOCK_P, BLOCK_O), tl.float32)
    for t in range(T):
        part = tl.zeros((BLOCK_P, BLOCK_O), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < C
            xb = tl.load(x_row[:, None] + c[None, :] * sxc, mask=valid[:, None] & c_ok[None, :], other=0.0)
            kb = tl.load(k_base + t * skt + c[:, None] * skc, mask=c_ok[:, None] & o_ok[None, :], other=0.0)
            part = _dot(xb, kb.to(xb.dtype), part, PRECISION, UPCAST)
        cf = tl.load(coef_ptr + b * scb + region * scm + t * sct, mask=valid, other=0.0)
        acc += cf[:, None] * part
    y = out_ptr + b[:, None] * syb + o[None, :] * syo + (ho * syh + wo * syw)[:, None]
    tl.store(y, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & o_ok[None, :])


@triton.jit
def region_backward_kernel(x_ptr, dy_ptr, coef_ptr, k_ptr, dx_ptr, eq7_ptr, h_ptr, order_ptr, mask_ptr,
                           group_start_ptr, N, HW, Wo, C, O, T, G, m,
                           sxb, sxc, sxh, sxw, sdb, sdo, sdh, sdw, scb, scm, sct, skm, skt, sko, skc,
                           sgb, sgc, sgh, sgw,
                           SHARED: tl.constexpr, NEED_DX: tl.constexpr, NEED_EQ7: tl.constexpr,
                           NEED_H: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_P: tl.constexpr,
                           BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr):
    """For a tile of pixels and a block of input channels: U_it = K[i, t]^T dY_n (one GEMM per region i and term
    t), then the own region's dX_n = sum_t coef[b, r, t] U_rt, Eq.7 ``g_i(n) = sum_t coef[b, i, t] <U_it, x_n>`` for
    every region i and ``h_t(n) = <U_rt, x_n>`` (the own region's per-term products, summed into grad_coef later).

    Grid (tiles, cdiv(C, BLOCK_C)). dX is written at its pixel (dx_ptr: the strided view of grad_x); g and h are
    this channel block's partial sums, written to eq7_ptr (CB, B, m, Ho * Wo) at [block, b, :, hw] and h_ptr (CB, N, T)
    at [block, n]."""
    group, lo, hi = _tile_range(tl.program_id(0), group_start_ptr, N, G, BLOCK_P, BLOCK_G, SHARED)
    if lo >= hi:
        return
    cb = tl.program_id(1)
    pos = lo + tl.arange(0, BLOCK_P)
    valid = pos < hi
    n, b, ho, wo, region = _pixels(pos, valid, order_ptr, mask_ptr, group, HW, Wo, SHARED)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    xc_mask = valid[:, None] & c_ok[None, :]
    xf = tl.load(x_ptr + (b * sxb + ho * sxh + wo * sxw)[:, None] + c[None, :] * sxc, mask=xc_mask,
                 other=0.0).to(tl.float32)
    dy_row = dy_ptr + b * sdb + ho * sdh + wo * sdw
    coef_row = coef_ptr + b * scb
    mcol = tl.arange(0, BLOCK_M)
    tcol = tl.arange(0, BLOCK_T)
    g = tl.zeros((BLOCK_P, BLOCK_M), tl.float32)
    h_own = tl.zeros((BLOCK_P, BLOCK_T), tl.float32)
    dx = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    if SHARED:
        first, stop = 0, 1
    elif NEED_EQ7:
        first, stop = 0, G
    else:
        first, stop = group, group + 1
    for i in range(first, stop):
        own = i == group
        for t in range(T):
            u = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
            for o0 in range(0, O, BLOCK_O):
                o = o0 + tl.arange(0, BLOCK_O)
                o_ok = o < O
                dyb = tl.load(dy_row[:, None] + o[None, :] * sdo, mask=valid[:, None] & o_ok[None, :], other=0.0)
                kb = tl.load(k_ptr + i * skm + t * skt + o[:, None] * sko + c[None, :] * skc,
                             mask=o_ok[:, None] & c_ok[None, :], other=0.0)
                u = _dot(dyb.to(kb.dtype), kb, u, PRECISION, UPCAST)
            h = tl.sum(u * xf, 1)
            if SHARED:
                cf = tl.load(coef_row + region * scm + t * sct, mask=valid, other=0.0)
                if NEED_EQ7:
                    every = tl.load(coef_row[:, None] + mcol[None, :] * scm + t * sct,
                                    mask=valid[:, None] & (mcol < m)[None, :], other=0.0)
                    g += every * h[:, None]
                if NEED_H:
                    h_own += tl.where(tcol[None, :] == t, h[:, None], 0.0)
                if NEED_DX:
                    dx += cf[:, None] * u
            else:
                cf = tl.load(coef_row + i * scm + t * sct, mask=valid, other=0.0)
                if NEED_EQ7:
                    g += tl.where(mcol[None, :] == i, (cf * h)[:, None], 0.0)
                if NEED_H:
                    h_own += tl.where((tcol[None, :] == t) & own, h[:, None], 0.0)
                if NEED_DX:
                    dx += tl.where(own, cf, 0.0)[:, None] * u
    if NEED_DX:
        gx = dx_ptr + (b * sgb + ho * sgh + wo * sgw)[:, None] + c[None, :] * sgc
        tl.store(gx, dx.to(dx_ptr.dtype.element_ty), mask=xc_mask)
    block = cb.to(tl.int64) * N
    if NEED_EQ7:
        row = block * m + b * m * HW + (n - b * HW)
        tl.store(eq7_ptr + row[:, None] + mcol[None, :] * HW, g, mask=valid[:, None] & (mcol < m)[None, :])
    if NEED_H:
        tl.store(h_ptr + ((block + n) * T)[:, None] + tcol[None, :], h_own,
                 mask=valid[:, None] & (tcol < T)[None, :])


@triton.jit
def region_kernel_grad_kernel(x_ptr, dy_ptr, coef_ptr, part_ptr, order_ptr, mask_ptr, group_start_ptr,
                              N, HW, Wo, C, O, T, S,
                              sxb, sxc, sxh, sxw, sdb, sdo, sdh, sdw, scb, scm, sct,
                              SHARED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                              BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    """dK[g, t] = sum over the group's pixels of coef[b, r, t] dY_n x_n^T, one (BLOCK_O, BLOCK_C) block, over the
    s-th of S contiguous slices of the group's tiles (a fixed split: the sum over slices is deterministic).

    Grid (groups * S, T, cdiv(O, BLOCK_O) * cdiv(C, BLOCK_C)); writes part_ptr (groups, S, T, O, C) float32."""
    gs = tl.program_id(0)
    group = gs // S
    s = gs - group * S
    t = tl.program_id(1)
    c_blocks = tl.cdiv(C, BLOCK_C)
    ob = tl.program_id(2) // c_blocks
    cb = tl.program_id(2) - ob * c_blocks
    if SHARED:
        lo = tl.program_id(0).to(tl.int64) * 0
        hi = lo + N
    else:
        lo = tl.load(group_start_ptr + group)
        hi = tl.load(group_start_ptr + group + 1)
    tiles = (hi - lo + BLOCK_P - 1) // BLOCK_P
    per = (tiles + S - 1) // S
    first = s * per
    stop = tl.minimum(first + per, tiles)
    o = ob * BLOCK_O + tl.arange(0, BLOCK_O)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    o_ok = o < O
    c_ok = c < C
    acc = tl.zeros((BLOCK_O, BLOCK_C), tl.float32)
    for tile in range(first, stop):
        pos = lo + tile * BLOCK_P + tl.arange(0, BLOCK_P)
        valid = pos < hi
        n, b, ho, wo, region = _pixels(pos, valid, order_ptr, mask_ptr, group, HW, Wo, SHARED)
        cf = tl.load(coef_ptr + b * scb + region * scm + t * sct, mask=valid, other=0.0)
        xb = tl.load(x_ptr + (b * sxb + ho * sxh + wo * sxw)[:, None] + c[None, :] * sxc,
                     mask=valid[:, None] & c_ok[None, :], other=0.0)
        dyb = tl.load(dy_ptr + (b * sdb + ho * sdh + wo * sdw)[:, None] + o[None, :] * sdo,
                      mask=valid[:, None] & o_ok[None, :], other=0.0)
        dyb = (dyb.to(tl.float32) * cf[:, None]).to(xb.dtype)
        acc = _dot(tl.trans(dyb), xb, acc, PRECISION, UPCAST)
    out = part_ptr + (gs.to(tl.int64) * T + t) * O * C + o[:, None] * C + c[None, :]
    tl.store(out, acc, mask=o_ok[:, None] & c_ok[None, :])


@triton.jit
def region_coef_grad_kernel(h_ptr, mask_ptr, out_ptr, HW, m, T,
                            BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr):
    """grad_coef[b, j, t] = sum of h[n, t] over the pixels n of sample b in region j (in pixel order).

    Grid (B,); h_ptr (N, T) float32, mask_ptr (N,) regions, out_ptr (B, m, T) float32 contiguous."""
    b = tl.program_id(0).to(tl.int64)
    mcol = tl.arange(0, BLOCK_M)
    tcol = tl.arange(0, BLOCK_T)
    acc = tl.zeros((BLOCK_M, BLOCK_T), tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        valid = p < HW
        n = b * HW + p
        region = tl.load(mask_ptr + n, mask=valid, other=-1)
        h = tl.load(h_ptr + (n * T)[:, None] + tcol[None, :], mask=valid[:, None] & (tcol < T)[None, :], other=0.0)
        onehot = (region[:, None] == mcol[None, :]).to(tl.float32)
        acc += tl.sum(onehot[:, :, None] * h[:, None, :], 0)
    tl.store(out_ptr + (b * m + mcol[:, None]) * T + tcol[None, :], acc,
             mask=(mcol < m)[:, None] & (tcol < T)[None, :])
