// CPU kernels for the decode step, called from JAX through the XLA FFI.
//
// Why: a decode step on CPU is memory bound, and XLA:CPU leaves bandwidth on the table in three
// places (measured on SmolLM2-135M, see docs/model.md): int8 matrix-vector products run on one
// core at about half the machine's bandwidth; float32 ones stream well but leave the second core
// idle; and decode attention first copies a sliced KV cache, then runs one tiny batched matmul
// per (row, kv head). These kernels read every weight and cache byte once, in place, and split
// the work over a small pool of spinning worker threads.
//
//   cpu_matmul_s8   x[M,K] f32 . (q[N,K] s8 * scale[N])^T -> y[M,N]  (weight-only int8)
//   cpu_matmul_f32  x[M,K] f32 . w[K,N] f32              -> y[M,N]
//   cpu_matmul_bf16 x[M,K] f32 . w[K,N] bf16             -> y[M,N]  (f32 accumulation)
//   cpu_argmax      x[M,N] f32 -> first index of each row's maximum
//   cpu_attention   q[N,KVH,G,D], k/v cache [S,KVH,T,D], slots[N], positions[N] -> out[N,KVH,G,D]
//                   row n attends to cache entries 0..positions[n] of slot slots[n] (a decode
//                   step has one row per slot; a prompt chunk one row per prompt token).
//
// Build: see inference_app/kernels/build.py (g++ -O3 for the CPU's feature level); the worker
// pool is in spin_pool.h, the block-quantized weight kernels in quant_kernels.cc.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "spin_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using inference_app_kernels::kBriefSpinMicros;
using inference_app_kernels::kSpinMicros;
using inference_app_kernels::NumChunks;
using inference_app_kernels::ParallelFor;
using inference_app_kernels::SpinPool;


// ---- int8 weights -----------------------------------------------------------------------

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 CvtS8x8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline float HSum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// Rows [n0, n1) of y = x . (q * scale)^T for MB input rows at once: each int8 weight is loaded
// and converted once for all of them.
template <int MB>
void MatmulS8Block(const float* x, const int8_t* q, const float* scale, float* y, int64_t k,
                   int64_t n, int64_t n0, int64_t n1) {
#if defined(__AVX2__) && defined(__FMA__)
  const int64_t k16 = k - k % 16;
  for (int64_t r = n0; r < n1; ++r) {
    const int8_t* row = q + r * k;
    __m256 a[MB][2];
    for (int m = 0; m < MB; ++m) a[m][0] = a[m][1] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k16; i += 16) {
      const __m256 w0 = CvtS8x8(row + i), w1 = CvtS8x8(row + i + 8);
      for (int m = 0; m < MB; ++m) {
        a[m][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * k + i), a[m][0]);
        a[m][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * k + i + 8), a[m][1]);
      }
    }
    for (int m = 0; m < MB; ++m) {
      float s = HSum256(_mm256_add_ps(a[m][0], a[m][1]));
      for (int64_t i = k16; i < k; ++i) s += static_cast<float>(row[i]) * x[m * k + i];
      y[m * n + r] = s * scale[r];
    }
  }
#else
  for (int64_t r = n0; r < n1; ++r) {
    for (int m = 0; m < MB; ++m) {
      float s = 0.f;
      for (int64_t i = 0; i < k; ++i) s += static_cast<float>(q[r * k + i]) * x[m * k + i];
      y[m * n + r] = s * scale[r];
    }
  }
#endif
}

void MatmulS8Rows(const float* x, const int8_t* q, const float* scale, float* y, int64_t m_rows,
                  int64_t k, int64_t n, int64_t n0, int64_t n1) {
  int64_t m0 = 0;
  for (; m0 + 4 <= m_rows; m0 += 4) MatmulS8Block<4>(x + m0 * k, q, scale, y + m0 * n, k, n, n0, n1);
  for (; m0 + 2 <= m_rows; m0 += 2) MatmulS8Block<2>(x + m0 * k, q, scale, y + m0 * n, k, n, n0, n1);
  for (; m0 < m_rows; ++m0) MatmulS8Block<1>(x + m0 * k, q, scale, y + m0 * n, k, n, n0, n1);
}

ffi::Error MatmulS8Impl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> q,
                        ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto qd = q.dimensions();
  if (xd.size() != 2 || qd.size() != 2 || xd[1] != qd[1] || static_cast<int64_t>(scale.element_count()) != qd[0]) {
    return ffi::Error::InvalidArgument("cpu_matmul_s8: expected x[M,K], q[N,K], scale[N]");
  }
  const int64_t m = xd[0], k = xd[1], n = qd[0];
  const float* xp = x.typed_data();
  const int8_t* qp = q.typed_data();
  const float* sp = scale.typed_data();
  float* yp = y->typed_data();
  const int64_t chunks = NumChunks(n, 64);
  const int64_t per = (n + chunks - 1) / chunks;
  ParallelFor(chunks, [&](int64_t c) {
    const int64_t n0 = c * per, n1 = std::min(n, n0 + per);
    if (n0 < n1) MatmulS8Rows(xp, qp, sp, yp, m, k, n, n0, n1);
  });
  return ffi::Error::Success();
}

// ---- float32 weights ----------------------------------------------------------------------

// Weight element loaders for the dense kernels: float32, or bfloat16 (the top half of a float32,
// so widening is a 16-bit shift).
struct F32W {
  using T = float;
  static float Scalar(const float* p) { return *p; }
#if defined(__AVX2__)
  static __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
#endif
};
struct BF16W {
  using T = uint16_t;
  static float Scalar(const uint16_t* p) {
    const uint32_t bits = static_cast<uint32_t>(*p) << 16;
    float f;
    __builtin_memcpy(&f, &bits, sizeof(f));
    return f;
  }
#if defined(__AVX2__)
  static __m256 Load8(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
#endif
};

// out[m, :] = sum over weight rows i in [k0, k1) of x[m, i] * w[i, :]. Each call streams one
// contiguous block of w (the best pattern for the hardware prefetchers), four rows per pass over
// the accumulator row so that it is loaded and stored a quarter as often.
template <typename W, int MB>
void DenseRowBlock(const float* x, const typename W::T* w, float* out, int64_t k, int64_t n,
                   int64_t k0, int64_t k1) {
  for (int m = 0; m < MB; ++m) std::fill(out + m * n, out + (m + 1) * n, 0.f);
  int64_t i = k0;
#if defined(__AVX2__) && defined(__FMA__)
  const int64_t n8 = n - n % 8;
  for (; i + 4 <= k1; i += 4) {
    const typename W::T* r0 = w + i * n;
    const typename W::T* r1 = r0 + n;
    const typename W::T* r2 = r1 + n;
    const typename W::T* r3 = r2 + n;
    for (int m = 0; m < MB; ++m) {
      const float* xm = x + m * k + i;
      const __m256 x0 = _mm256_set1_ps(xm[0]), x1 = _mm256_set1_ps(xm[1]), x2 = _mm256_set1_ps(xm[2]),
                   x3 = _mm256_set1_ps(xm[3]);
      float* a = out + m * n;
      for (int64_t j = 0; j < n8; j += 8) {
        __m256 v = _mm256_loadu_ps(a + j);
        v = _mm256_fmadd_ps(x0, W::Load8(r0 + j), v);
        v = _mm256_fmadd_ps(x1, W::Load8(r1 + j), v);
        v = _mm256_fmadd_ps(x2, W::Load8(r2 + j), v);
        v = _mm256_fmadd_ps(x3, W::Load8(r3 + j), v);
        _mm256_storeu_ps(a + j, v);
      }
      for (int64_t j = n8; j < n; ++j) {
        a[j] += xm[0] * W::Scalar(r0 + j) + xm[1] * W::Scalar(r1 + j) + xm[2] * W::Scalar(r2 + j) +
                xm[3] * W::Scalar(r3 + j);
      }
    }
  }
#endif
  for (; i < k1; ++i) {
    const typename W::T* wr = w + i * n;
    for (int m = 0; m < MB; ++m) {
      const float xv = x[m * k + i];
      float* a = out + m * n;
      for (int64_t j = 0; j < n; ++j) a[j] += xv * W::Scalar(wr + j);
    }
  }
}

template <typename W>
void DenseRows(const float* x, const typename W::T* w, float* out, int64_t m_rows, int64_t k,
               int64_t n, int64_t k0, int64_t k1) {
  int64_t m0 = 0;
  for (; m0 + 4 <= m_rows; m0 += 4) DenseRowBlock<W, 4>(x + m0 * k, w, out + m0 * n, k, n, k0, k1);
  for (; m0 + 2 <= m_rows; m0 += 2) DenseRowBlock<W, 2>(x + m0 * k, w, out + m0 * n, k, n, k0, k1);
  for (; m0 < m_rows; ++m0) DenseRowBlock<W, 1>(x + m0 * k, w, out + m0 * n, k, n, k0, k1);
}

// y[M,N] = x[M,K] . w[K,N], the contraction split over threads: each chunk streams a contiguous
// block of weight rows into its own partial sum (chunk 0 straight into y), then they are added.
template <typename W>
void Dense(const float* xp, const typename W::T* wp, float* yp, int64_t m, int64_t k, int64_t n) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(SpinPool::Get().threads(), k / 16));
  const int64_t per = (k + chunks - 1) / chunks;
  thread_local std::vector<float> scratch;
  const size_t need = static_cast<size_t>((chunks - 1) * m * n);
  if (scratch.size() < need) scratch.resize(need);
  float* sp = scratch.data();
  ParallelFor(chunks, [&](int64_t c) {
    const int64_t k0 = c * per, k1 = std::min(k, k0 + per);
    float* out = c == 0 ? yp : sp + (c - 1) * m * n;
    if (k0 < k1) {
      DenseRows<W>(xp, wp, out, m, k, n, k0, k1);
    } else {
      std::fill(out, out + m * n, 0.f);
    }
  });
  for (int64_t c = 1; c < chunks; ++c) {
    const float* part = sp + (c - 1) * m * n;
    for (int64_t i = 0; i < m * n; ++i) yp[i] += part[i];
  }
}

// The FFI entry for x[M,K] f32 . w[K,N] with W's weight type (DT its XLA dtype).
template <typename W, ffi::DataType DT>
ffi::Error DenseImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<DT> w, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0]) {
    return ffi::Error::InvalidArgument("cpu_matmul_f32/bf16: expected x[M,K] f32, w[K,N]");
  }
  const auto* wp = reinterpret_cast<const typename W::T*>(w.untyped_data());
  Dense<W>(x.typed_data(), wp, y->typed_data(), xd[0], xd[1], wd[1]);
  return ffi::Error::Success();
}

// ---- attention over the slot cache ---------------------------------------------------------------------

#if defined(__AVX2__) && defined(__FMA__)
// exp(x) for the softmax: x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor
// polynomial (relative error < 2e-7), times 2^n built in the exponent bits.
inline __m256 Exp256(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 720.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
// Softmax in place over each of the G score rows of length len.
inline void SoftmaxRows(float* scores, int64_t g_heads, int64_t len) {
  for (int64_t g = 0; g < g_heads; ++g) {
    float* sg = scores + g * len;
    float mx = sg[0];
    for (int64_t t = 1; t < len; ++t) mx = std::max(mx, sg[t]);
    const __m256 mxv = _mm256_set1_ps(mx);
    __m256 sumv = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= len; t += 8) {
      const __m256 e = Exp256(_mm256_sub_ps(_mm256_loadu_ps(sg + t), mxv));
      _mm256_storeu_ps(sg + t, e);
      sumv = _mm256_add_ps(sumv, e);
    }
    float sum = HSum256(sumv);
    for (; t < len; ++t) {
      sg[t] = std::exp(sg[t] - mx);
      sum += sg[t];
    }
    const float inv = 1.f / sum;
    for (int64_t i = 0; i < len; ++i) sg[i] *= inv;
  }
}

// AttendOne for a head size known at compile time (D / 8 vectors): the query and the output
// accumulators stay in registers, and four keys share one horizontal reduction.
template <int D>
void AttendOneFixed(const float* q, const float* kc, const float* vc, float* out, int64_t g_heads,
                    int64_t len, float scale, float* scores) {
  constexpr int V = D / 8;
  const __m128 scale4 = _mm_set1_ps(scale);
  for (int64_t g = 0; g < g_heads; ++g) {
    __m256 qv[V];
    for (int i = 0; i < V; ++i) qv[i] = _mm256_loadu_ps(q + g * D + 8 * i);
    float* sg = scores + g * len;
    int64_t t = 0;
    for (; t + 4 <= len; t += 4) {
      const float* k0 = kc + t * D;
      __m256 a0 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(k0));
      __m256 a1 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(k0 + D));
      __m256 a2 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(k0 + 2 * D));
      __m256 a3 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(k0 + 3 * D));
      for (int i = 1; i < V; ++i) {
        a0 = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(k0 + 8 * i), a0);
        a1 = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(k0 + D + 8 * i), a1);
        a2 = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(k0 + 2 * D + 8 * i), a2);
        a3 = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(k0 + 3 * D + 8 * i), a3);
      }
      // per 128-bit lane: [a0, a1, a2, a3] partial sums; the two lanes added give the four dots
      const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
      const __m128 dots = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
      _mm_storeu_ps(sg + t, _mm_mul_ps(dots, scale4));
    }
    for (; t < len; ++t) {
      const float* kr = kc + t * D;
      __m256 acc = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kr));
      for (int i = 1; i < V; ++i) acc = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(kr + 8 * i), acc);
      sg[t] = HSum256(acc) * scale;
    }
  }
  SoftmaxRows(scores, g_heads, len);
  for (int64_t g = 0; g < g_heads; ++g) {
    const float* sg = scores + g * len;
    __m256 acc[V];
    for (int i = 0; i < V; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {
      const __m256 p = _mm256_set1_ps(sg[t]);
      const float* vr = vc + t * D;
      for (int i = 0; i < V; ++i) acc[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * i), acc[i]);
    }
    for (int i = 0; i < V; ++i) _mm256_storeu_ps(out + g * D + 8 * i, acc[i]);
  }
}
#endif

// One (row, kv head): its G query heads attend to cache entries [0, len).
void AttendOne(const float* q, const float* kc, const float* vc, float* out, int64_t g_heads,
               int64_t len, int64_t d, float scale, float* scores) {
#if defined(__AVX2__) && defined(__FMA__)
  const bool vec = d % 8 == 0;
#else
  const bool vec = false;
#endif
  for (int64_t t = 0; t < len; ++t) {
    const float* kr = kc + t * d;
    for (int64_t g = 0; g < g_heads; ++g) {
      const float* qg = q + g * d;
      float s = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
      if (vec) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i), _mm256_loadu_ps(kr + i), acc);
        s = HSum256(acc);
      }
#endif
      if (!vec) {
        for (int64_t i = 0; i < d; ++i) s += qg[i] * kr[i];
      }
      scores[g * len + t] = s * scale;
    }
  }
  for (int64_t g = 0; g < g_heads; ++g) {
    float* sg = scores + g * len;
    float mx = sg[0];
    for (int64_t t = 1; t < len; ++t) mx = std::max(mx, sg[t]);
    float sum = 0.f;
    int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 mxv = _mm256_set1_ps(mx);
    __m256 sumv = _mm256_setzero_ps();
    for (; t + 8 <= len; t += 8) {
      const __m256 e = Exp256(_mm256_sub_ps(_mm256_loadu_ps(sg + t), mxv));
      _mm256_storeu_ps(sg + t, e);
      sumv = _mm256_add_ps(sumv, e);
    }
    sum = HSum256(sumv);
#endif
    for (; t < len; ++t) {
      sg[t] = std::exp(sg[t] - mx);
      sum += sg[t];
    }
    const float inv = 1.f / sum;
    for (int64_t i = 0; i < len; ++i) sg[i] *= inv;
  }
  std::fill(out, out + g_heads * d, 0.f);
  for (int64_t t = 0; t < len; ++t) {
    const float* vr = vc + t * d;
    for (int64_t g = 0; g < g_heads; ++g) {
      const float p = scores[g * len + t];
      float* og = out + g * d;
#if defined(__AVX2__) && defined(__FMA__)
      if (vec) {
        const __m256 pv = _mm256_set1_ps(p);
        for (int64_t i = 0; i < d; i += 8) {
          _mm256_storeu_ps(og + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + i), _mm256_loadu_ps(og + i)));
        }
        continue;
      }
#endif
      for (int64_t i = 0; i < d; ++i) og[i] += p * vr[i];
    }
  }
}

// ---- RMSNorm ------------------------------------------------------------------------------

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for each row r of x [..., D], w [D]. Each row is
// summed alone in one fixed order (8 lanes, then the lanes left to right, then the tail), so its
// bits do not depend on how many rows the call holds. XLA:CPU's own row reduction vectorises
// across rows from 8 rows up, which changes a row's last bits; the block kernels round the
// result to int8, which can turn that into a different token. One custom call per norm also
// compiles in a fraction of the time of the same fixed order written as JAX ops.
ffi::Error RmsNormImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                       float eps) {
  const int64_t d = static_cast<int64_t>(w.element_count());
  if (d < 1 || x.element_count() % d != 0 || y->element_count() != x.element_count()) {
    return ffi::Error::InvalidArgument("cpu_rms_norm: expected x[..., D], w[D], y like x");
  }
  const int64_t m = static_cast<int64_t>(x.element_count()) / d;
  const float* wp = w.typed_data();
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x.typed_data() + r * d;
    float* yr = y->typed_data() + r * d;
    float lanes[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= d; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    _mm256_storeu_ps(lanes, acc);
#else
    for (; i + 8 <= d; i += 8) {
      for (int l = 0; l < 8; ++l) lanes[l] = std::fma(xr[i + l], xr[i + l], lanes[l]);
    }
#endif
    float sum = lanes[0];
    for (int l = 1; l < 8; ++l) sum += lanes[l];
    for (; i < d; ++i) sum = std::fma(xr[i], xr[i], sum);
    const float inv = 1.f / std::sqrt(sum / static_cast<float>(d) + eps);
    for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] * inv) * wp[j];
  }
  return ffi::Error::Success();
}

// ---- rotary embedding of the fused QKV projection -------------------------------------------

// y[N, KVH, G + 2, D] (per KV head: its G query heads, then k, then v) -> q[N, KVH, G, D] and
// k[N, KVH, D] rotated by cos, sin [N, D/2] (HF's rotate-half layout), v[N, KVH, D] copied. As
// XLA fusions the slices, rotation and concatenation cost 0.66 ms per layer of a 256-row step
// (scalar index arithmetic per element); here they are one pass over the rows. The arithmetic is
// transformer.rope's: x1 * cos - x2 * sin, x2 * cos + x1 * sin, each a multiply, a multiply and
// an add or subtract.
ffi::Error RopeQkvImpl(ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                       ffi::ResultBuffer<ffi::F32> q, ffi::ResultBuffer<ffi::F32> k,
                       ffi::ResultBuffer<ffi::F32> v) {
  auto yd = y.dimensions();
  if (yd.size() != 4 || yd[2] < 3 || yd[3] % 2 != 0 || cos.dimensions().size() != 2 ||
      cos.dimensions()[0] != yd[0] || cos.dimensions()[1] * 2 != yd[3] ||
      sin.element_count() != cos.element_count()) {
    return ffi::Error::InvalidArgument("cpu_rope_qkv: expected y[N,KVH,G+2,D], cos and sin [N,D/2]");
  }
  const int64_t n = yd[0], kvh = yd[1], g = yd[2] - 2, d = yd[3], half = d / 2;
  const float* yp = y.typed_data();
  float* qp = q->typed_data();
  float* kp = k->typed_data();
  float* vp = v->typed_data();
  auto rotate = [half](const float* x, const float* c, const float* s, float* out) {
    for (int64_t i = 0; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      const float ac = a * c[i], bs = b * s[i], bc = b * c[i], as = a * s[i];
      out[i] = ac - bs;
      out[i + half] = bc + as;
    }
  };
  auto rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* c = cos.typed_data() + r * half;
      const float* s = sin.typed_data() + r * half;
      for (int64_t h = 0; h < kvh; ++h) {
        const float* src = yp + ((r * kvh + h) * (g + 2)) * d;
        for (int64_t j = 0; j < g; ++j) rotate(src + j * d, c, s, qp + ((r * kvh + h) * g + j) * d);
        rotate(src + g * d, c, s, kp + (r * kvh + h) * d);
        std::memcpy(vp + (r * kvh + h) * d, src + (g + 1) * d, sizeof(float) * d);
      }
    }
  };
  const int64_t chunks = n * kvh * (g + 2) * d < (1 << 15) ? 1 : NumChunks(n, 16);
  const int64_t per = (n + chunks - 1) / chunks;
  ParallelFor(chunks, [&](int64_t i) { rows(i * per, std::min(n, (i + 1) * per)); }, kBriefSpinMicros);
  return ffi::Error::Success();
}

// ---- greedy sampling ----------------------------------------------------------------------

// Index of the first maximum of each row (jnp.argmax semantics, NaN aside).
ffi::Error ArgmaxImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::S32> out) {
  auto xd = x.dimensions();
  if (xd.size() != 2 || xd[1] < 1) return ffi::Error::InvalidArgument("cpu_argmax: expected x[M,N>0]");
  const int64_t m = xd[0], n = xd[1];
  const float* xp = x.typed_data();
  int32_t* op = out->typed_data();
  ParallelFor(m, [&](int64_t r) {
    const float* row = xp + r * n;
    float best = row[0];
    int64_t j = 1;
#if defined(__AVX2__)
    __m256 mv = _mm256_set1_ps(row[0]);
    for (; j + 8 <= n; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(row + j));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    best = _mm_cvtss_f32(h);
#endif
    for (; j < n; ++j) best = std::max(best, row[j]);
    int64_t idx = 0;
    while (idx < n && row[idx] != best) ++idx;
    op[r] = static_cast<int32_t>(idx < n ? idx : 0);
  });
  return ffi::Error::Success();
}

// Ragged attention over the slot cache: row n (a decode token, or one token of a prompt chunk)
// attends to entries 0..positions[n] of slot slots[n]. A row whose slot or position is out of
// range is padding: its output is zero and it reads nothing.
ffi::Error RaggedAttentionImpl(ffi::Buffer<ffi::F32> q,
                               ffi::Buffer<ffi::F32> k_cache, ffi::Buffer<ffi::F32> v_cache,
                               ffi::Buffer<ffi::S32> slots, ffi::Buffer<ffi::S32> positions,
                               ffi::ResultBuffer<ffi::F32> out, float scale) {
  auto qd = q.dimensions();
  auto cd = k_cache.dimensions();
  auto vd = v_cache.dimensions();
  if (qd.size() != 4 || cd.size() != 4 || vd.size() != 4 || cd[1] != qd[1] || cd[3] != qd[3] ||
      vd[0] != cd[0] || vd[1] != cd[1] || vd[2] != cd[2] || vd[3] != cd[3] ||
      static_cast<int64_t>(positions.element_count()) != qd[0] ||
      static_cast<int64_t>(slots.element_count()) != qd[0]) {
    return ffi::Error::InvalidArgument(
        "cpu_attention: expected q[N,KVH,G,D], k/v cache [S,KVH,T,D], slots[N], positions[N]");
  }
  const int64_t n = qd[0], kvh = qd[1], g = qd[2], d = qd[3], s_max = cd[0], t_max = cd[2];
  const float* qp = q.typed_data();
  const float* kp = k_cache.typed_data();
  const float* vp = v_cache.typed_data();
  const int32_t* slot = slots.typed_data();
  const int32_t* pos = positions.typed_data();
  float* op = out->typed_data();
  // Units are claimed last row first: a prompt chunk's late rows (after the decode rows) cost
  // the most, and starting with them keeps the threads evenly loaded to the end.
  // Rows beyond a few mean XLA's GEMMs, not kernels, run next: let the workers sleep soon.
  const int64_t spin = n <= 4 ? kSpinMicros : kBriefSpinMicros;
  ParallelFor(n * kvh, [&](int64_t claimed) {
    const int64_t unit = n * kvh - 1 - claimed;
    const int64_t row = unit / kvh, h = unit % kvh;
    const int64_t q_off = (row * kvh + h) * g * d;
    if (slot[row] < 0 || slot[row] >= s_max || pos[row] < 0 || pos[row] >= t_max) {
      std::fill(op + q_off, op + q_off + g * d, 0.f);
      return;
    }
    const int64_t len = static_cast<int64_t>(pos[row]) + 1;
    thread_local std::vector<float> scores;
    if (static_cast<int64_t>(scores.size()) < g * len) scores.resize(g * len);
    const int64_t cache_off = (slot[row] * kvh + h) * t_max * d;
#if defined(__AVX2__) && defined(__FMA__)
    if (d == 64) {  // SmolLM2, Llama 3.2 1B/3B
      AttendOneFixed<64>(qp + q_off, kp + cache_off, vp + cache_off, op + q_off, g, len, scale,
                         scores.data());
      return;
    }
#endif
    AttendOne(qp + q_off, kp + cache_off, vp + cache_off, op + q_off, g, len, d, scale,
              scores.data());
  }, spin);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpuMatmulS8, MatmulS8Impl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpuMatmulF32, (DenseImpl<F32W, ffi::F32>),
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpuMatmulBF16, (DenseImpl<BF16W, ffi::BF16>),
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpuRmsNorm, RmsNormImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpuRopeQkv, RopeQkvImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpuArgmax, ArgmaxImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpuAttention, RaggedAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

// ==== Paged attention (KV blocks + block tables) ===========================================
//
// The paged KV cache of one layer is one array of fixed-size blocks, kv[P, 2*KVH, BS, D]: block
// p holds BS consecutive tokens of one sequence; within it, the K rows of KV head h are the
// contiguous [BS, D] slab 2h and its V rows slab 2h + 1. A sequence's token t lives in block
// table[t / BS] at offset t % BS. Each (block, head) slab is read front to back, so a block of
// 64+ tokens streams like the slot cache above (measured: 16-token blocks ran 1.2-1.5x slower
// than the slot cache, 128-token blocks at par; interleaving heads inside a token row, the
// Pallas TPU layout, 1.2-1.8x slower at every block size).
//
//   cpu_paged_attention  q[N,KVH,G,D], kv[P,2*KVH,BS,D], block_tables[S,MB], slots[N],
//                        positions[N] -> out[N,KVH,G,D]
//                        row n attends to tokens 0..positions[n] of sequence slots[n].

namespace {

// One (sequence, KV head)'s rows: the K row of token t is at
// base + table[t / bs] * block_stride + (t % bs) * d, its V row `v_offset` floats further.
struct PagedRows {
  const float* base;
  const int32_t* table;
  int64_t bs, d, block_stride, v_offset;
  const float* block(int64_t t0) const { return base + table[t0 / bs] * block_stride; }
};

#if defined(__AVX2__) && defined(__FMA__)
// The float vector the fixed-size paged kernel runs on: 8 lanes (AVX2), or 16 (AVX-512: half the
// instructions for prompt chunks, whose rows make attention a tenth to a third of a step).
// `Fold` adds a vector's halves down to 8 lanes for the horizontal sums.
struct F32x8 {
  using V = __m256;
  static constexpr int kLanes = 8;
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Set1(float x) { return _mm256_set1_ps(x); }
  static V Zero() { return _mm256_setzero_ps(); }
  static __m256 Fold(V a) { return a; }
};
#if defined(__AVX512F__)
struct F32x16 {
  using V = __m512;
  static constexpr int kLanes = 16;
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Set1(float x) { return _mm512_set1_ps(x); }
  static V Zero() { return _mm512_setzero_ps(); }
  static __m256 Fold(V a) { return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)); }
};
using PagedVec = F32x16;
#else
using PagedVec = F32x8;
#endif

// AttendOneFixed over a paged sequence: the same register-resident query and accumulators and
// four keys per reduction, walking the sequence block by block.
template <typename Vec, int D>
void AttendPagedFixed(const float* q, const PagedRows& kv, float* out, int64_t g_heads, int64_t len,
                      float scale, float* scores) {
  using V = typename Vec::V;
  constexpr int L = Vec::kLanes, N = D / L;
  const __m128 scale4 = _mm_set1_ps(scale);
  for (int64_t g = 0; g < g_heads; ++g) {
    V qv[N];
    for (int i = 0; i < N; ++i) qv[i] = Vec::Load(q + g * D + L * i);
    float* sg = scores + g * len;
    for (int64_t t0 = 0; t0 < len; t0 += kv.bs) {
      const float* kb = kv.block(t0);
      const int64_t n = std::min(kv.bs, len - t0);
      int64_t t = 0;
      for (; t + 4 <= n; t += 4) {
        const float* k0 = kb + t * D;
        V a0 = Vec::Mul(qv[0], Vec::Load(k0));
        V a1 = Vec::Mul(qv[0], Vec::Load(k0 + D));
        V a2 = Vec::Mul(qv[0], Vec::Load(k0 + 2 * D));
        V a3 = Vec::Mul(qv[0], Vec::Load(k0 + 3 * D));
        for (int i = 1; i < N; ++i) {
          a0 = Vec::Fma(qv[i], Vec::Load(k0 + L * i), a0);
          a1 = Vec::Fma(qv[i], Vec::Load(k0 + D + L * i), a1);
          a2 = Vec::Fma(qv[i], Vec::Load(k0 + 2 * D + L * i), a2);
          a3 = Vec::Fma(qv[i], Vec::Load(k0 + 3 * D + L * i), a3);
        }
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(Vec::Fold(a0), Vec::Fold(a1)),
                                        _mm256_hadd_ps(Vec::Fold(a2), Vec::Fold(a3)));
        const __m128 dots = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        _mm_storeu_ps(sg + t0 + t, _mm_mul_ps(dots, scale4));
      }
      for (; t < n; ++t) {
        const float* kr = kb + t * D;
        V acc = Vec::Mul(qv[0], Vec::Load(kr));
        for (int i = 1; i < N; ++i) acc = Vec::Fma(qv[i], Vec::Load(kr + L * i), acc);
        sg[t0 + t] = HSum256(Vec::Fold(acc)) * scale;
      }
    }
  }
  SoftmaxRows(scores, g_heads, len);
  for (int64_t g = 0; g < g_heads; ++g) {
    const float* sg = scores + g * len;
    V acc[N];
    for (int i = 0; i < N; ++i) acc[i] = Vec::Zero();
    for (int64_t t0 = 0; t0 < len; t0 += kv.bs) {
      const float* vb = kv.block(t0) + kv.v_offset;
      const int64_t n = std::min(kv.bs, len - t0);
      for (int64_t t = 0; t < n; ++t) {
        const V p = Vec::Set1(sg[t0 + t]);
        const float* vr = vb + t * D;
        for (int i = 0; i < N; ++i) acc[i] = Vec::Fma(p, Vec::Load(vr + L * i), acc[i]);
      }
    }
    for (int i = 0; i < N; ++i) Vec::Store(out + g * D + L * i, acc[i]);
  }
}
#endif

// Any head size: plain loops (the compiler vectorizes the inner ones).
void AttendPaged(const float* q, const PagedRows& kv, float* out, int64_t g_heads, int64_t len,
                 float scale, float* scores) {
  const int64_t d = kv.d;
  for (int64_t g = 0; g < g_heads; ++g) {
    const float* qg = q + g * d;
    float mx = -INFINITY;
    for (int64_t t = 0; t < len; ++t) {
      const float* kr = kv.block(t) + (t % kv.bs) * d;
      float s = 0.f;
      for (int64_t i = 0; i < d; ++i) s += qg[i] * kr[i];
      scores[t] = s * scale;
      mx = std::max(mx, scores[t]);
    }
    float sum = 0.f;
    for (int64_t t = 0; t < len; ++t) {
      scores[t] = std::exp(scores[t] - mx);
      sum += scores[t];
    }
    float* og = out + g * d;
    std::fill(og, og + d, 0.f);
    const float inv = 1.f / sum;
    for (int64_t t = 0; t < len; ++t) {
      const float p = scores[t] * inv;
      const float* vr = kv.block(t) + kv.v_offset + (t % kv.bs) * d;
      for (int64_t i = 0; i < d; ++i) og[i] += p * vr[i];
    }
  }
}

// Ragged attention over the paged cache: row n (a decode token, or one token of a prompt chunk)
// attends to tokens 0..positions[n] of sequence slots[n]. A row whose slot or position is out of
// range, or whose block-table entries up to that position name no block, is padding: its output
// is zero and it reads nothing.
ffi::Error PagedAttentionImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kv,
                              ffi::Buffer<ffi::S32> block_tables, ffi::Buffer<ffi::S32> slots,
                              ffi::Buffer<ffi::S32> positions, ffi::ResultBuffer<ffi::F32> out,
                              float scale) {
  auto qd = q.dimensions();
  auto cd = kv.dimensions();
  auto bd = block_tables.dimensions();
  if (qd.size() != 4 || cd.size() != 4 || bd.size() != 2 || cd[1] != 2 * qd[1] || cd[3] != qd[3] ||
      static_cast<int64_t>(positions.element_count()) != qd[0] ||
      static_cast<int64_t>(slots.element_count()) != qd[0]) {
    return ffi::Error::InvalidArgument(
        "cpu_paged_attention: expected q[N,KVH,G,D], kv[P,2*KVH,BS,D], block_tables[S,MB], "
        "slots[N], positions[N]");
  }
  const int64_t n = qd[0], kvh = qd[1], g = qd[2], d = qd[3];
  const int64_t num_blocks = cd[0], bs = cd[2], seqs = bd[0], max_blocks = bd[1];
  const float* qp = q.typed_data();
  const float* kvp = kv.typed_data();
  const int32_t* tables = block_tables.typed_data();
  const int32_t* slot = slots.typed_data();
  const int32_t* pos = positions.typed_data();
  float* op = out->typed_data();
  const int64_t spin = n <= 4 ? kSpinMicros : kBriefSpinMicros;  // as in RaggedAttentionImpl
  ParallelFor(n * kvh, [&](int64_t claimed) {
    const int64_t unit = n * kvh - 1 - claimed;  // last rows (the longest prefixes) first
    const int64_t row = unit / kvh, h = unit % kvh;
    const int64_t q_off = (row * kvh + h) * g * d;
    const int64_t len = static_cast<int64_t>(pos[row]) + 1;
    bool valid = slot[row] >= 0 && slot[row] < seqs && len >= 1 && len <= max_blocks * bs;
    const int32_t* table = tables + (valid ? static_cast<int64_t>(slot[row]) * max_blocks : 0);
    for (int64_t j = 0; valid && j * bs < len; ++j) valid = table[j] >= 0 && table[j] < num_blocks;
    if (!valid) {
      std::fill(op + q_off, op + q_off + g * d, 0.f);
      return;
    }
    thread_local std::vector<float> scores;
    if (static_cast<int64_t>(scores.size()) < g * len) scores.resize(g * len);
    const PagedRows rows{kvp + 2 * h * bs * d, table, bs, d, 2 * kvh * bs * d, bs * d};
#if defined(__AVX2__) && defined(__FMA__)
    if (d == 64) {
      AttendPagedFixed<PagedVec, 64>(qp + q_off, rows, op + q_off, g, len, scale, scores.data());
      return;
    }
#endif
    AttendPaged(qp + q_off, rows, op + q_off, g, len, scale, scores.data());
  }, spin);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpuPagedAttention, PagedAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
