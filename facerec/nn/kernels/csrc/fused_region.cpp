// Fused 1x1 DRConv on CPU (float32; AVX-512, or AVX2 with FMA), forward and backward:
// facerec/nn/kernels/fused_cpu.py builds and loads it, with the flags of one instruction set.
//
// For every sample b and region j the region filter W_bj = sum_k coef[b, j, k] K[j, k] (K given transposed,
// (C, O) per kernel) is built in a per-thread buffer that stays in cache, the pixels of (b, j) are gathered from
// the input (any strides: NCHW, channels_last, a stride-2 view) into a small row tile, and one register-blocked
// GEMM writes their output rows in pixel order (per micro-step 6 rows x 64 outputs in 24 zmm accumulators with
// AVX-512, 6 rows x 16 outputs in 12 ymm accumulators with AVX2). No B*m*O*C tensor, no sort, no gathers over the
// whole batch: the input is read once and the output written once. Samples run in parallel (at::parallel_for).
// Exactness: every pixel gets exactly its own region's filter (the same sum as a materialised filter, in float32
// with FMA).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

namespace {

// V16: 16 floats, one zmm register (AVX-512) or two ymm registers (AVX2). Every vector loop below steps over
// 16 floats, so the two builds share all code but this and the micro-step's shape (MR x 16 NV outputs).
#if defined(__AVX512F__)
struct V16 { __m512 v; };
inline V16 vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void vstore(float* p, V16 a) { _mm512_storeu_ps(p, a.v); }
inline V16 vzero() { return {_mm512_setzero_ps()}; }
inline V16 vset1(float s) { return {_mm512_set1_ps(s)}; }
inline V16 vmul(V16 a, V16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline V16 vfmadd(V16 a, V16 b, V16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline float vsum(V16 a) { return _mm512_reduce_add_ps(a.v); }
constexpr int MR = 6;     // rows per micro-step
constexpr int NV = 4;     // V16 vectors of outputs per micro-step (64 floats: 24 zmm accumulators)
#elif defined(__AVX2__) && defined(__FMA__)
struct V16 { __m256 lo, hi; };
inline V16 vload(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void vstore(float* p, V16 a) { _mm256_storeu_ps(p, a.lo); _mm256_storeu_ps(p + 8, a.hi); }
inline V16 vzero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline V16 vset1(float s) { const __m256 v = _mm256_set1_ps(s); return {v, v}; }
inline V16 vmul(V16 a, V16 b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline V16 vfmadd(V16 a, V16 b, V16 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
inline float vsum(V16 a) {
  const __m256 s = _mm256_add_ps(a.lo, a.hi);
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}
constexpr int MR = 6;     // rows per micro-step
constexpr int NV = 1;     // V16 vectors of outputs per micro-step (16 floats: 12 ymm accumulators of 16 ymm)
#else
#error "fused_region.cpp needs AVX-512 (-mavx512f) or AVX2 with FMA (-mavx2 -mfma)"
#endif

// C rows (given as pointers) [0, R) x columns [n0, n0 + 16 * V) = A (R x K, lda) @ B (K x 16V, row k at
// b0 + k * ldb). With TWO, B = s0 * B0 + s1 * B1 is formed in registers from two packed kernel panels (for a
// single row block this reads the two kernels once instead of building the filter in memory and reading it
// back). With accumulate, C rows are added to (a K-block after the first).
template <int R, int V, bool TWO>
inline void micro(const float* a, int64_t lda, const float* b0, const float* b1, float s0, float s1, int64_t ldb,
                  float* const* c, int64_t n0, int64_t k_size, bool accumulate) {
  V16 acc[R][V];
  if (accumulate) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = vload(c[r] + n0 + 16 * v);
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = vzero();
  }
  const V16 v0 = vset1(s0), v1 = vset1(s1);
  for (int64_t k = 0; k < k_size; ++k) {
    V16 bv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      if constexpr (TWO)
        bv[v] = vfmadd(v1, vload(b1 + k * ldb + 16 * v), vmul(v0, vload(b0 + k * ldb + 16 * v)));
      else
        bv[v] = vload(b0 + k * ldb + 16 * v);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V16 av = vset1(a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = vfmadd(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) vstore(c[r] + n0 + 16 * v, acc[r][v]);
}

template <int V, bool TWO>
void micro_rows(int rows, const float* a, int64_t lda, const float* b0, const float* b1, float s0, float s1,
                int64_t ldb, float* const* c, int64_t n0, int64_t k_size, bool accumulate) {
  switch (rows) {
    case 6: micro<6, V, TWO>(a, lda, b0, b1, s0, s1, ldb, c, n0, k_size, accumulate); break;
    case 5: micro<5, V, TWO>(a, lda, b0, b1, s0, s1, ldb, c, n0, k_size, accumulate); break;
    case 4: micro<4, V, TWO>(a, lda, b0, b1, s0, s1, ldb, c, n0, k_size, accumulate); break;
    case 3: micro<3, V, TWO>(a, lda, b0, b1, s0, s1, ldb, c, n0, k_size, accumulate); break;
    case 2: micro<2, V, TWO>(a, lda, b0, b1, s0, s1, ldb, c, n0, k_size, accumulate); break;
    default: micro<1, V, TWO>(a, lda, b0, b1, s0, s1, ldb, c, n0, k_size, accumulate); break;
  }
}

template <bool TWO>
void micro_any(int rows, int64_t nv, const float* a, int64_t lda, const float* b0, const float* b1, float s0,
               float s1, int64_t ldb, float* const* c, int64_t n0, int64_t k_size, bool accumulate) {
  switch (nv) {
    case 4: micro_rows<4, TWO>(rows, a, lda, b0, b1, s0, s1, ldb, c, n0, k_size, accumulate); break;
    case 3: micro_rows<3, TWO>(rows, a, lda, b0, b1, s0, s1, ldb, c, n0, k_size, accumulate); break;
    case 2: micro_rows<2, TWO>(rows, a, lda, b0, b1, s0, s1, ldb, c, n0, k_size, accumulate); break;
    default: micro_rows<1, TWO>(rows, a, lda, b0, b1, s0, s1, ldb, c, n0, k_size, accumulate); break;
  }
}

// W is packed in column panels of PANEL = 16 NV outputs (64 with AVX-512, 16 with AVX2; the layout belongs to the
// build that packed it): panel p (outputs [P p, P p + pw), pw = min(P, O - P p)) is a (K x pw) row-major block at
// W + P p * K. A panel (32 KB at K = 128 with AVX-512) stays in L1 across the row blocks; rows of an unpacked
// (K x O) matrix 2 KB apart would map to a handful of L1 sets and evict each other.
constexpr int64_t PANEL = 16 * NV;

inline int64_t packed_index(int64_t k, int64_t o, int64_t k_size, int64_t out_cols) {
  const int64_t p0 = o / PANEL * PANEL;
  return p0 * k_size + k * std::min<int64_t>(PANEL, out_cols - p0) + (o - p0);
}

// K is cut into blocks of KC rows so that a block of a panel (KC x 64 floats, 32 KB, with AVX-512) stays in L1
// across the row blocks; a whole panel of K = 512 (128 KB) would be read from L2 once per 6 rows.
constexpr int64_t KC = 128;

// The filter W = w0 (packed, K x O), or s0 * w0 + s1 * w1 when w1 is not null (formed in registers).
struct Filter {
  const float* w0;
  const float* w1;
  float s0, s1;
  float at(int64_t k, int64_t o, int64_t k_size, int64_t out_cols) const {
    const int64_t idx = packed_index(k, o, k_size, out_cols);
    return w1 == nullptr ? w0[idx] : s0 * w0[idx] + s1 * w1[idx];
  }
};

// One column panel [n0, n0 + 16 nv) of rows c[i] = a[i] (K) @ W for i < rows (K blocked, row blocks of MR).
void gemm_panel(int64_t rows, const float* a, int64_t k_size, const Filter& f, int64_t out_cols, int64_t n0,
                int64_t nv, float* const* c, int64_t c_col) {
  const int64_t pw = std::min<int64_t>(PANEL, out_cols - n0);
  const float* p0 = f.w0 + n0 * k_size;
  const float* p1 = f.w1 == nullptr ? nullptr : f.w1 + n0 * k_size;
  for (int64_t k0 = 0; k0 < k_size; k0 += KC) {
    const int64_t kc = std::min<int64_t>(KC, k_size - k0);
    for (int64_t m0 = 0; m0 < rows; m0 += MR) {
      const int r = static_cast<int>(std::min<int64_t>(MR, rows - m0));
      const float* ap = a + m0 * k_size + k0;
      if (p1 == nullptr)
        micro_any<false>(r, nv, ap, k_size, p0 + k0 * pw, nullptr, 1.f, 0.f, pw, c + m0, c_col, kc, k0 > 0);
      else
        micro_any<true>(r, nv, ap, k_size, p0 + k0 * pw, p1 + k0 * pw, f.s0, f.s1, pw, c + m0, c_col, kc, k0 > 0);
    }
  }
}

// out rows c[i][0:O] = a[i] (K) @ W for i < rows.
void gemm_rows(int64_t rows, const float* a, int64_t k_size, const Filter& f, int64_t out_cols, float* const* c) {
  const int64_t vec_cols = out_cols / 16 * 16;
  for (int64_t n0 = 0; n0 < vec_cols; n0 += PANEL)
    gemm_panel(rows, a, k_size, f, out_cols, n0, std::min<int64_t>(NV, (vec_cols - n0) / 16), c, n0);
  for (int64_t i = 0; i < rows; ++i) {            // output columns past the last multiple of 16
    for (int64_t o = vec_cols; o < out_cols; ++o) {
      float s = 0.f;
      for (int64_t k = 0; k < k_size; ++k) s += a[i * k_size + k] * f.at(k, o, k_size, out_cols);
      c[i][o] = s;
    }
  }
}

void gemm_rows(int64_t rows, const float* a, int64_t k_size, const float* w, int64_t out_cols, float* const* c) {
  gemm_rows(rows, a, k_size, Filter{w, nullptr, 1.f, 0.f}, out_cols, c);
}

// Eq.7 and dX for one (sample, region): T = dY (rows x K) @ W (K x N, packed), one column panel at a time into a
// (rows x 64) buffer; then g[i] += <T_i, x_i> and T_i stored to dx[i] where dx[i] is not null.
void gemm_rows_ep(int64_t rows, const float* a, int64_t k_size, const float* w, int64_t out_cols,
                  const float* const* x, float* const* dx, float* g) {
  const int64_t vec_cols = out_cols / 16 * 16;
  const Filter f{w, nullptr, 1.f, 0.f};
  std::vector<float> tbuf(rows * PANEL);
  std::vector<float*> trow(rows);
  for (int64_t i = 0; i < rows; ++i) trow[i] = tbuf.data() + i * PANEL;
  for (int64_t n0 = 0; n0 < vec_cols; n0 += PANEL) {
    const int64_t nv = std::min<int64_t>(NV, (vec_cols - n0) / 16);
    gemm_panel(rows, a, k_size, f, out_cols, n0, nv, trow.data(), 0);
    for (int64_t i = 0; i < rows; ++i) {
      V16 dot = vzero();
      for (int64_t v = 0; v < nv; ++v)
        dot = vfmadd(vload(trow[i] + 16 * v), vload(x[i] + n0 + 16 * v), dot);
      g[i] += vsum(dot);
      if (dx[i] != nullptr) std::memcpy(dx[i] + n0, trow[i], 16 * nv * sizeof(float));
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t o = vec_cols; o < out_cols; ++o) {
      float t = 0.f;
      for (int64_t k = 0; k < k_size; ++k) t += a[i * k_size + k] * f.at(k, o, k_size, out_cols);
      g[i] += t * x[i][o];
      if (dx[i] != nullptr) dx[i][o] = t;
    }
  }
}

// Filter gradient of one (sample, region): G = DY^T X (O x C) for its n pixels, as one GEMM (A = DY^T gathered
// into at (O x n), B = X rows gathered into the panel layout bp), into the buffer g (O x C); then
// acc[k] += coef[k] * G and dcoef[k] = <G, K_k> (K_k, acc[k]: O x C row-major) in one pass.
void filter_grad(int64_t n, const float* const* dy, const float* const* x, int64_t out_rows, int64_t channels,
                 const float* coef, int64_t terms, float* const* acc, const float* const* kern, float* dcoef,
                 float* at, float* bp, float* g, float** grow) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out_rows; ++o) at[o * n + i] = dy[i][o];
  for (int64_t p0 = 0; p0 < channels; p0 += PANEL) {
    const int64_t pw = std::min<int64_t>(PANEL, channels - p0);
    for (int64_t i = 0; i < n; ++i) std::memcpy(bp + p0 * n + i * pw, x[i] + p0, pw * sizeof(float));
  }
  for (int64_t o = 0; o < out_rows; ++o) grow[o] = g + o * channels;
  gemm_rows(out_rows, at, n, bp, channels, grow);
  const int64_t size = out_rows * channels;
  for (int64_t k = 0; k < terms; ++k) {
    float* ak = acc[k];
    const float* kk = kern[k];
    const float ck = coef[k];
    float dot = 0.f;
    for (int64_t e = 0; e < size; ++e) {
      ak[e] += ck * g[e];
      dot += g[e] * kk[e];
    }
    dcoef[k] = dot;
  }
}

// W (packed) = sum_t coef[t] * K_t, the K_t packed the same way (at k0 + t * k_stride): elementwise.
void build_filter(float* w, const float* k0, int64_t k_stride, const float* coef, int64_t terms, int64_t size) {
  const float c0 = coef[0];
  if (terms == 1) {
    for (int64_t e = 0; e < size; ++e) w[e] = c0 * k0[e];
    return;
  }
  const float c1 = coef[1];
  const float* k1 = k0 + k_stride;
  for (int64_t e = 0; e < size; ++e) w[e] = c0 * k0[e] + c1 * k1[e];
  for (int64_t t = 2; t < terms; ++t) {
    const float ct = coef[t];
    const float* kt = k0 + t * k_stride;
    for (int64_t e = 0; e < size; ++e) w[e] += ct * kt[e];
  }
}

// Per sample, the guided mask (argmax over the m channels of the guide, first maximum; NaN counts as the
// largest, as torch.argmax) and its pixels ordered by region (counting sort): order (B*P), starts (B*(m+1)).
void region_order(const torch::Tensor& guide, int64_t batch, int64_t regions, int64_t out_w, int64_t pixels,
                  std::vector<int64_t>& order, std::vector<int64_t>& starts) {
  const float* gp = guide.data_ptr<float>();
  const int64_t gb = guide.stride(0), gj = guide.stride(1), gh = guide.stride(2), gw = guide.stride(3);
  at::parallel_for(0, batch, 1, [&](int64_t lo, int64_t hi) {
    std::vector<int64_t> fill(regions), mask(pixels);
    for (int64_t b = lo; b < hi; ++b) {
      int64_t* st = starts.data() + b * (regions + 1);
      std::fill(st, st + regions + 1, 0);
      for (int64_t p = 0; p < pixels; ++p) {
        const float* g = gp + b * gb + (p / out_w) * gh + (p % out_w) * gw;
        float best = g[0];
        int64_t arg = 0;
        for (int64_t j = 1; j < regions; ++j) {
          const float v = g[j * gj];
          if (v > best || (std::isnan(v) && !std::isnan(best))) { best = v; arg = j; }
        }
        mask[p] = arg;
        ++st[arg + 1];
      }
      for (int64_t j = 0; j < regions; ++j) st[j + 1] += st[j];
      std::copy(st, st + regions, fill.begin());
      int64_t* ob = order.data() + b * pixels;
      for (int64_t p = 0; p < pixels; ++p) ob[fill[mask[p]]++] = p;
    }
  });
}

}  // namespace

// x: (B, C, Ho, Wo) float32, any strides (the strided input grid); guide: (B, m, Ho, Wo) float32, any strides;
// coef: (B, m, T) float32; kernels: (m, T, C * O) float32 from pack_kernels, the last dim contiguous (any
// strides, 0 included, on the first two). Returns y_rows: (B * Ho * Wo, O), row b * Ho * Wo + p = pixel p.
torch::Tensor fused_region_forward(torch::Tensor x, torch::Tensor guide, torch::Tensor coef, torch::Tensor kernels,
                                   int64_t out_cols) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat && x.device().is_cpu(), "x: (B, C, Ho, Wo) float32");
  TORCH_CHECK(guide.dim() == 4 && guide.scalar_type() == torch::kFloat, "guide: (B, m, Ho, Wo) float32");
  TORCH_CHECK(coef.dim() == 3 && coef.scalar_type() == torch::kFloat, "coef: (B, m, T) float32");
  TORCH_CHECK(kernels.dim() == 3 && kernels.scalar_type() == torch::kFloat, "kernels: (m, T, C * O) float32");
  const int64_t batch = x.size(0), channels = x.size(1), out_h = x.size(2), out_w = x.size(3);
  const int64_t regions = kernels.size(0), terms = kernels.size(1);
  TORCH_CHECK(out_cols > 0 && kernels.size(2) == channels * out_cols && kernels.stride(2) == 1,
              "kernels: (m, T, C * O) with a contiguous last dim");
  TORCH_CHECK(guide.size(0) == batch && guide.size(1) == regions && guide.size(2) == out_h && guide.size(3) == out_w,
              "guide shape");
  TORCH_CHECK(coef.size(0) == batch && coef.size(1) == regions && coef.size(2) == terms, "coef shape");
  const int64_t pixels = out_h * out_w;
  auto coef_c = coef.contiguous();
  auto y = torch::empty({batch * pixels, out_cols}, x.options());
  const float* xp = x.data_ptr<float>();
  const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const float* cp = coef_c.data_ptr<float>();
  const float* kp = kernels.data_ptr<float>();
  const int64_t kr = kernels.stride(0), kt = kernels.stride(1);
  float* yp = y.data_ptr<float>();
  std::vector<int64_t> order(batch * pixels), starts(batch * (regions + 1));
  region_order(guide, batch, regions, out_w, pixels, order, starts);
  // Pass 2: tasks (region j, sample b), region-major so that a thread's consecutive tasks share K[j] in cache.
  const int64_t size = channels * out_cols;
  at::parallel_for(0, regions * batch, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> w(size), tile(pixels * channels);
    std::vector<float*> rows(pixels);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t j = task / batch, b = task % batch;
      const int64_t* st = starts.data() + b * (regions + 1);
      const int64_t n = st[j + 1] - st[j];
      if (n == 0) continue;
      const int64_t* pix = order.data() + b * pixels + st[j];
      const float* cj = cp + (b * regions + j) * terms;
      const bool two_terms_in_registers = terms == 2 && n <= MR;
      float* wp = w.data();
      if (!two_terms_in_registers)      // W_bj^T (C x O, packed) = sum_k coef[b, j, k] K[j, k]^T
        build_filter(wp, kp + j * kr, kt, cj, terms, size);
      // gather the pixels' input rows (n x C)
      const float* xb = xp + b * sb;
      if (sc == 1) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t p = pix[i];
          std::memcpy(tile.data() + i * channels, xb + (p / out_w) * sh + (p % out_w) * sw,
                      channels * sizeof(float));
        }
      } else {
        for (int64_t c = 0; c < channels; ++c) {
          const float* xc = xb + c * sc;
          for (int64_t i = 0; i < n; ++i) {
            const int64_t p = pix[i];
            tile[i * channels + c] = xc[(p / out_w) * sh + (p % out_w) * sw];
          }
        }
      }
      for (int64_t i = 0; i < n; ++i) rows[i] = yp + (b * pixels + pix[i]) * out_cols;
      if (two_terms_in_registers)
        gemm_rows(n, tile.data(), channels, Filter{kp + j * kr, kp + j * kr + kt, cj[0], cj[1]}, out_cols,
                  rows.data());
      else
        gemm_rows(n, tile.data(), channels, wp, out_cols, rows.data());
    }
  });
  return y;
}

namespace {

// The tensors of fused_region_backward (layouts there), checked, with their raw pointers and strides for the
// tasks: one task per (region j, sample b).
struct BackwardProblem {
  int64_t batch, regions, out_w, pixels, channels, out_cols, terms, size;
  const float *xp, *dyp, *cp, *kp, *pp;
  int64_t kr, kt, pr, pt;
  float *dxp, *gp, *dkp, *dcp;
  std::vector<int64_t> order, starts;   // pixels of every sample ordered by region (region_order)

  BackwardProblem(const torch::Tensor& x_rows, const torch::Tensor& dy_rows, const torch::Tensor& guide,
                  const torch::Tensor& coef, const torch::Tensor& kernels_oc, const torch::Tensor& kernels_plain) {
    TORCH_CHECK(x_rows.dim() == 2 && x_rows.is_contiguous() && x_rows.scalar_type() == torch::kFloat, "x_rows");
    TORCH_CHECK(dy_rows.dim() == 2 && dy_rows.is_contiguous() && dy_rows.scalar_type() == torch::kFloat,
                "dy_rows");
    TORCH_CHECK(guide.dim() == 4 && guide.scalar_type() == torch::kFloat, "guide: (B, m, Ho, Wo) float32");
    TORCH_CHECK(coef.dim() == 3 && coef.scalar_type() == torch::kFloat && coef.is_contiguous(),
                "coef: (B, m, T) float32, contiguous");
    batch = guide.size(0), regions = guide.size(1), out_w = guide.size(3);
    pixels = guide.size(2) * out_w, channels = x_rows.size(1), out_cols = dy_rows.size(1), terms = coef.size(2);
    size = channels * out_cols;
    TORCH_CHECK(x_rows.size(0) == batch * pixels && dy_rows.size(0) == batch * pixels, "rows: B * Ho * Wo");
    TORCH_CHECK(kernels_oc.dim() == 3 && kernels_oc.size(0) == regions && kernels_oc.size(1) == terms &&
                kernels_oc.size(2) == size && kernels_oc.stride(2) == 1, "kernels_oc: (m, T, O * C)");
    TORCH_CHECK(kernels_plain.dim() == 4 && kernels_plain.size(0) == regions && kernels_plain.size(1) == terms &&
                kernels_plain.size(2) == out_cols && kernels_plain.size(3) == channels &&
                kernels_plain.stride(3) == 1 && kernels_plain.stride(2) == channels, "kernels_plain: (m, T, O, C)");
    TORCH_CHECK(coef.size(0) == batch && coef.size(1) == regions, "coef shape");
    xp = x_rows.data_ptr<float>(), dyp = dy_rows.data_ptr<float>(), cp = coef.data_ptr<float>();
    kp = kernels_oc.data_ptr<float>(), kr = kernels_oc.stride(0), kt = kernels_oc.stride(1);
    pp = kernels_plain.data_ptr<float>(), pr = kernels_plain.stride(0), pt = kernels_plain.stride(1);
    order.resize(batch * pixels);
    starts.resize(batch * (regions + 1));
    region_order(guide, batch, regions, out_w, pixels, order, starts);
  }
};

// A thread's buffers: the filter W_bj, row pointers, and (with filter gradients) the work space of filter_grad and
// the partial kernel gradients of its regions [j_lo, j_hi].
struct BackwardScratch {
  std::vector<float> w, acc, gbuf, at, bpk;
  std::vector<const float*> xrow, dyrow, kern;
  std::vector<float*> dxrow, accp, grow;
  int64_t j_lo;

  BackwardScratch(const BackwardProblem& pb, int64_t j_lo, int64_t j_hi, bool filter_grads)
      : w(pb.size), acc(filter_grads ? (j_hi - j_lo + 1) * pb.terms * pb.size : 0, 0.f),
        gbuf(filter_grads ? pb.size : 0), at(filter_grads ? pb.out_cols * pb.pixels : 0),
        bpk(filter_grads ? pb.pixels * pb.channels : 0), xrow(pb.pixels), dyrow(pb.pixels), kern(pb.terms),
        dxrow(pb.pixels), accp(pb.terms), grow(pb.out_cols), j_lo(j_lo) {}
};

// Eq.7 for every pixel of sample b and dX for region j's own pixels (pix[0:n]): T = dY_b (P x O) @ W_bj (O x C),
// g_j(p) = <T_p, x_p> in the GEMM's epilogue.
void eq7_and_dx(const BackwardProblem& pb, BackwardScratch& s, int64_t b, int64_t j, const int64_t* pix,
                int64_t n) {
  build_filter(s.w.data(), pb.kp + j * pb.kr, pb.kt, pb.cp + (b * pb.regions + j) * pb.terms, pb.terms, pb.size);
  for (int64_t p = 0; p < pb.pixels; ++p) {
    s.xrow[p] = pb.xp + (b * pb.pixels + p) * pb.channels;
    s.dxrow[p] = nullptr;
  }
  for (int64_t i = 0; i < n; ++i) s.dxrow[pix[i]] = pb.dxp + (b * pb.pixels + pix[i]) * pb.channels;
  gemm_rows_ep(pb.pixels, pb.dyp + b * pb.pixels * pb.out_cols, pb.out_cols, s.w.data(), pb.channels,
               s.xrow.data(), s.dxrow.data(), pb.gp + (b * pb.regions + j) * pb.pixels);
}

// The filter gradient G_bj of (b, j) (its n pixels pix[0:n]) folded into the thread's accumulators of region j,
// and the coefficient gradient dcoef[b, j, k] = <G_bj, K[j, k]>.
void fold_filter_grad(const BackwardProblem& pb, BackwardScratch& s, int64_t b, int64_t j, const int64_t* pix,
                      int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    s.xrow[i] = pb.xp + (b * pb.pixels + pix[i]) * pb.channels;
    s.dyrow[i] = pb.dyp + (b * pb.pixels + pix[i]) * pb.out_cols;
  }
  for (int64_t k = 0; k < pb.terms; ++k) {
    s.accp[k] = s.acc.data() + ((j - s.j_lo) * pb.terms + k) * pb.size;
    s.kern[k] = pb.pp + j * pb.pr + k * pb.pt;
  }
  const int64_t bj = b * pb.regions + j;
  filter_grad(n, s.dyrow.data(), s.xrow.data(), pb.out_cols, pb.channels, pb.cp + bj * pb.terms, pb.terms,
              s.accp.data(), s.kern.data(), pb.dcp + bj * pb.terms, s.at.data(), s.bpk.data(), s.gbuf.data(),
              s.grow.data());
}

// Adds the threads' partial kernel gradients (first task -> (first region, sums)) into dk in task order, not in the
// order threads finished: the same result on every run with the same thread count.
void merge_partials(const BackwardProblem& pb,
                    const std::map<int64_t, std::pair<int64_t, std::vector<float>>>& partials) {
  for (const auto& entry : partials) {
    const int64_t j_lo = entry.second.first;
    const std::vector<float>& acc = entry.second.second;
    const int64_t count = static_cast<int64_t>(acc.size()) / (pb.terms * pb.size);
    for (int64_t jj = 0; jj < count; ++jj)
      for (int64_t k = 0; k < pb.terms; ++k) {
        float* dst = pb.dkp + ((j_lo + jj) * pb.terms + k) * pb.size;
        const float* src = acc.data() + (jj * pb.terms + k) * pb.size;
        for (int64_t e = 0; e < pb.size; ++e) dst[e] += src[e];
      }
  }
}

}  // namespace

// Backward of fused_region_forward (stride 1 grid given as rows). x_rows: (B*P, C), dy_rows: (B*P, O) float32
// contiguous; guide (B, m, Ho, Wo); coef (B, m, T) contiguous; kernels_oc: (m, T, O * C) from pack_kernels of the
// (O, C) kernels (any strides on the first two dims); kernels_plain: (m, T, O, C) (same kernels, row-major; any
// strides on the first two dims). Returns (dx_rows (B*P, C), eq7 (B, m, Ho, Wo), dkernels (m, T, O, C), dcoef
// (B, m, T)) with eq7[b, j, p] = <dy_p, W_bj x_p> (the paper's Eq.7 for every region) and, when filter_grads (else
// empty), dkernels[j, k] = sum_b coef[b, j, k] G_bj, dcoef[b, j, k] = <G_bj, K[j, k]>, G_bj = sum_{p in (b, j)}
// dy_p x_p^T: one (O x C) GEMM per (sample, region), efficient for large groups only (56x56), so callers with small
// groups compute these per region over the batch instead (fused_region_filter_grads).
std::vector<torch::Tensor> fused_region_backward(torch::Tensor x_rows, torch::Tensor dy_rows, torch::Tensor guide,
                                                 torch::Tensor coef, torch::Tensor kernels_oc,
                                                 torch::Tensor kernels_plain, bool filter_grads) {
  auto coef_c = coef.contiguous();
  BackwardProblem pb(x_rows, dy_rows, guide, coef_c, kernels_oc, kernels_plain);
  const auto options = x_rows.options();
  auto dx = torch::empty({pb.batch * pb.pixels, pb.channels}, options);
  auto eq7 = torch::zeros({pb.batch, pb.regions, guide.size(2), pb.out_w}, options);
  auto dk = filter_grads ? torch::zeros({pb.regions, pb.terms, pb.out_cols, pb.channels}, options)
                         : torch::empty({0}, options);
  auto dcoef = filter_grads ? torch::zeros({pb.batch, pb.regions, pb.terms}, options) : torch::empty({0}, options);
  pb.dxp = dx.data_ptr<float>(), pb.gp = eq7.data_ptr<float>();
  pb.dkp = dk.data_ptr<float>(), pb.dcp = dcoef.data_ptr<float>();
  std::mutex merge;
  std::map<int64_t, std::pair<int64_t, std::vector<float>>> partials;   // first task -> (first region, sums)
  at::parallel_for(0, pb.regions * pb.batch, 1, [&](int64_t lo, int64_t hi) {
    BackwardScratch scratch(pb, lo / pb.batch, (hi - 1) / pb.batch, filter_grads);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t j = task / pb.batch, b = task % pb.batch;
      const int64_t* st = pb.starts.data() + b * (pb.regions + 1);
      const int64_t n = st[j + 1] - st[j];
      const int64_t* pix = pb.order.data() + b * pb.pixels + st[j];
      eq7_and_dx(pb, scratch, b, j, pix, n);
      if (n > 0 && filter_grads) fold_filter_grad(pb, scratch, b, j, pix, n);
    }
    if (!filter_grads) return;
    std::lock_guard<std::mutex> guard(merge);
    partials.emplace(lo, std::make_pair(scratch.j_lo, std::move(scratch.acc)));
  });
  merge_partials(pb, partials);
  return {dx, eq7, dk, dcoef};
}

// Filter and coefficient gradients per region over the whole batch (for regions of few pixels per sample, where
// per-(sample, region) filter gradients cost more than their multiply-adds). x_rows (B*P, C), dy_rows (B*P, O);
// guide (B, m, Ho, Wo); coef (B, m, T); kernels_co: (m, T, C * O) packed (C, O) kernels (pack_kernels of the
// transposed kernels); kernels_plain (m, T, O, C). Returns dkernels (m, T, O, C) with dkernels[j, k] =
// sum_{p in j} coef[b_p, j, k] dy_p x_p^T (one GEMM per region, K = the region's pixels) and dcoef (B, m, T)
// with dcoef[b, j, k] = sum_{p in (b, j)} <dy_p, K[j, k] x_p> (u = X_j K_jk^T, one GEMM per region and k).
std::vector<torch::Tensor> fused_region_filter_grads(torch::Tensor x_rows, torch::Tensor dy_rows, torch::Tensor guide,
                                                     torch::Tensor coef, torch::Tensor kernels_co,
                                                     int64_t out_cols) {
  TORCH_CHECK(x_rows.dim() == 2 && x_rows.is_contiguous() && x_rows.scalar_type() == torch::kFloat, "x_rows");
  TORCH_CHECK(dy_rows.dim() == 2 && dy_rows.is_contiguous() && dy_rows.scalar_type() == torch::kFloat, "dy_rows");
  TORCH_CHECK(guide.dim() == 4 && guide.scalar_type() == torch::kFloat, "guide: (B, m, Ho, Wo) float32");
  TORCH_CHECK(coef.dim() == 3 && coef.scalar_type() == torch::kFloat, "coef: (B, m, T) float32");
  const int64_t batch = guide.size(0), regions = guide.size(1), out_w = guide.size(3);
  const int64_t pixels = guide.size(2) * out_w, channels = x_rows.size(1), terms = coef.size(2);
  TORCH_CHECK(dy_rows.size(1) == out_cols && x_rows.size(0) == batch * pixels && dy_rows.size(0) == batch * pixels,
              "rows: B * Ho * Wo");
  TORCH_CHECK(kernels_co.dim() == 3 && kernels_co.size(0) == regions && kernels_co.size(1) == terms &&
              kernels_co.size(2) == channels * out_cols && kernels_co.stride(2) == 1, "kernels_co: (m, T, C * O)");
  std::vector<int64_t> order(batch * pixels), starts(batch * (regions + 1));
  region_order(guide, batch, regions, out_w, pixels, order, starts);
  auto coef_c = coef.contiguous();
  auto dk = torch::empty({regions, terms, out_cols, channels}, x_rows.options());
  auto dcoef = torch::zeros({batch, regions, terms}, x_rows.options());
  const float* xp = x_rows.data_ptr<float>();
  const float* dyp = dy_rows.data_ptr<float>();
  const float* cp = coef_c.data_ptr<float>();
  const float* kp = kernels_co.data_ptr<float>();
  const int64_t kr = kernels_co.stride(0), kt = kernels_co.stride(1);
  float* dkp = dk.data_ptr<float>();
  float* dcp = dcoef.data_ptr<float>();
  at::parallel_for(0, regions, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      std::vector<int64_t> rows_j, sample_j;                    // the region's rows, sample by sample
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t* st = starts.data() + b * (regions + 1);
        for (int64_t i = st[j]; i < st[j + 1]; ++i) {
          rows_j.push_back(b * pixels + order[b * pixels + i]);
          sample_j.push_back(b);
        }
      }
      const int64_t n = static_cast<int64_t>(rows_j.size());
      std::vector<float*> drow(terms * out_cols);
      for (int64_t e = 0; e < terms * out_cols; ++e) drow[e] = dkp + (j * terms * out_cols + e) * channels;
      if (n == 0) {
        for (int64_t e = 0; e < terms * out_cols; ++e) std::fill(drow[e], drow[e] + channels, 0.f);
        continue;
      }
      // dK_j = L^T X_j, L_i = [coef[b_i, j, k] dy_i]_k: A = L^T (T*O x n), B = X_j packed (n x C)
      std::vector<float> at(terms * out_cols * n), bp(n * channels), xj(n * channels);
      for (int64_t i = 0; i < n; ++i) {
        const float* dyi = dyp + rows_j[i] * out_cols;
        const float* ci = cp + (sample_j[i] * regions + j) * terms;
        for (int64_t k = 0; k < terms; ++k)
          for (int64_t o = 0; o < out_cols; ++o) at[(k * out_cols + o) * n + i] = ci[k] * dyi[o];
        std::memcpy(xj.data() + i * channels, xp + rows_j[i] * channels, channels * sizeof(float));
      }
      for (int64_t p0 = 0; p0 < channels; p0 += PANEL) {
        const int64_t pw = std::min<int64_t>(PANEL, channels - p0);
        for (int64_t i = 0; i < n; ++i) std::memcpy(bp.data() + p0 * n + i * pw, xj.data() + i * channels + p0,
                                                    pw * sizeof(float));
      }
      gemm_rows(terms * out_cols, at.data(), n, bp.data(), channels, drow.data());
      // dcoef: u = X_j K_jk^T (n x O) per k, dotted with dy row by row, summed per sample in row order
      std::vector<float> u(n * out_cols);
      std::vector<float*> urow(n);
      for (int64_t i = 0; i < n; ++i) urow[i] = u.data() + i * out_cols;
      for (int64_t k = 0; k < terms; ++k) {
        gemm_rows(n, xj.data(), channels, kp + j * kr + k * kt, out_cols, urow.data());
        for (int64_t i = 0; i < n; ++i) {
          const float* dyi = dyp + rows_j[i] * out_cols;
          float dot = 0.f;
          for (int64_t o = 0; o < out_cols; ++o) dot += urow[i][o] * dyi[o];
          dcp[(sample_j[i] * regions + j) * terms + k] += dot;
        }
      }
    }
  });
  return {dk, dcoef};
}

// kernels_t: (N, C, O) float32 -> (N, C * O), each (C, O) matrix in the panel layout of gemm_rows.
torch::Tensor pack_kernels(torch::Tensor kernels_t) {
  TORCH_CHECK(kernels_t.dim() == 3 && kernels_t.scalar_type() == torch::kFloat, "kernels_t: (N, C, O) float32");
  auto src = kernels_t.contiguous();
  const int64_t count = src.size(0), k_size = src.size(1), out_cols = src.size(2);
  auto out = torch::empty({count, k_size * out_cols}, src.options());
  const float* sp = src.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, count, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t k = 0; k < k_size; ++k)
        for (int64_t o = 0; o < out_cols; ++o)
          op[i * k_size * out_cols + packed_index(k, o, k_size, out_cols)] = sp[(i * k_size + k) * out_cols + o];
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_region_forward", &fused_region_forward, "fused 1x1 DRConv forward (inference, float32)");
  m.def("pack_kernels", &pack_kernels, "(N, C, O) kernels to the fused kernel's panel layout");
  m.def("fused_region_backward", &fused_region_backward, "backward of the fused 1x1 DRConv (float32)");
  m.def("fused_region_filter_grads", &fused_region_filter_grads, "filter / coefficient gradients per region");
}
