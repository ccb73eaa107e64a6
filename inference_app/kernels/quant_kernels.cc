// Matrix products with block-quantized weights (llama.cpp's Q4_0, Q4_1, Q8_0 as stored), called
// from JAX through the XLA FFI (wrappers: quant_ops.py; formats: model/quant.py).
//
// Why: a decode step streams every weight once, so its speed is bytes per weight; Q4_1 is 5 bits
// (20 bytes per 32 weights), float32 is 32. The activations are quantized per block of 32 to
// int8 with a float scale (as llama.cpp's q8_1), and each (activation block, weight block) pair
// is one integer dot product: u8 x s8 multiply-adds (AVX2 vpmaddubsw + vpmaddwd; vpdpbusd where
// the target has VNNI) scaled by the two block scales in float. The same code serves many rows
// (a decode step of 32-64 slots, a prefill chunk): a tile of up to 4 activation rows x 2 weight
// rows shares every weight load and unpacked nibble, and each thread owns a range of output
// rows.
//
// Rows from `float_from` on (a step's prompt rows: the engine lays out decode rows first) take a
// second path. Prefill is bound by arithmetic, not by bytes, and the integer dot products above
// spend four vector instructions per 32 multiply-adds. So a panel of 16 weight rows is
// dequantized once into float32 (L2-resident) and each float row meets it in float32 FMAs, a
// register tile of rows x 16 outputs. Those rows are not rounded to int8: the product is exactly
// the float32 one with the dequantized weights, up to summation order.
//
//   quant_matmul_q4_0  x[M,K] f32, float_from s32[], qs u8[N,K/2], d f16[N,K/32]            -> y[M,N]
//   quant_matmul_q4_1  x[M,K] f32, float_from s32[], qs u8[N,K/2], d f16[N,K/32], m f16[...] -> y[M,N]
//   quant_matmul_q8_0  x[M,K] f32, float_from s32[], qs s8[N,K],   d f16[N,K/32]            -> y[M,N]
//
// with y[m, n] = sum_k x[m, k] * w[n, k] and w the dequantized weight (model/quant.py), up to the
// rounding of x to int8 per block. Per block b of 32 inputs, with x ~ dx[b] * qx and
// s[b] = dx[b] * sum(qx):
//   q4_0: dw * dx * dot(nibbles, qx) - 8 * dw * s      (w = dw * (nibble - 8))
//   q4_1: dw * dx * dot(nibbles, qx) + mw * s          (w = dw * nibble + mw)
//   q8_0: dw * dx * dot(qw, qx)
// The second terms are one short dot product over the blocks per (row, output), done apart.
//
// Every output of either path is one fixed-order sum over k, whatever M and the tile a row lands
// in, so a row's result has the same bits in any batch (the engine's greedy output relies on it).
//
// Dispatch is at compile time: build.py compiles this file for the CPU's feature level (AVX2 +
// FMA + F16C; AVX-512 VNNI or AVX-VNNI add vpdpbusd); without AVX2 the plain C++ loops below run.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "spin_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using inference_app_kernels::NumChunks;
using inference_app_kernels::ParallelFor;

constexpr int64_t kBlock = 32;

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QK_AVX2 1
#endif

// IEEE half -> float, for targets without F16C (the tests build this path too).
inline float HalfToFloat(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((man & 0x400) == 0) {
        man <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000 | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

void HalvesToFloats(const uint16_t* h, float* f, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
  }
#endif
  for (; i < n; ++i) f[i] = HalfToFloat(h[i]);
}

// ---- activations -------------------------------------------------------------------------------

// One activation row quantized per block: qx[k] ~ x[k] / dx[b], and s[b] = dx[b] * sum(qx of b).
// Rounding is to nearest, ties to even (what _mm256_cvtps_epi32 does, and numpy's round).
void QuantizeRow(const float* x, int64_t k, int8_t* qx, float* dx, float* s) {
  for (int64_t b = 0; b < k / kBlock; ++b) {
    const float* xb = x + b * kBlock;
    int8_t* qb = qx + b * kBlock;
#if defined(QK_AVX2)
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(xb + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float d = _mm_cvtss_f32(m4) / 127.f;
    const __m256 id = _mm256_set1_ps(d > 0.f ? 1.f / d : 0.f);
    __m256i q[4];
    for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));
    __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_hadd_epi32(s4, s4);
    s4 = _mm_hadd_epi32(s4, s4);
    // pack 32 x i32 -> 32 x i8; the packs work per 128-bit lane, the permute restores the order
    const __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qb),
                        _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    dx[b] = d;
    s[b] = d * static_cast<float>(_mm_cvtsi128_si32(s4));
#else
    float amax = 0.f;
    for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.f;
    const float id = d > 0.f ? 1.f / d : 0.f;
    int32_t sum = 0;
    for (int i = 0; i < kBlock; ++i) {
      const int32_t q = static_cast<int32_t>(std::nearbyint(xb[i] * id));
      qb[i] = static_cast<int8_t>(q);
      sum += q;
    }
    dx[b] = d;
    s[b] = d * static_cast<float>(sum);
#endif
  }
}

struct QuantizedRows {
  std::vector<int8_t> q;  // [M, K]
  std::vector<float> d;   // [M, K/32]
  std::vector<float> s;   // [M, K/32]
};

void QuantizeRows(const float* x, int64_t m, int64_t k, QuantizedRows& out) {
  const int64_t nb = k / kBlock;
  out.q.resize(static_cast<size_t>(m * k));
  out.d.resize(static_cast<size_t>(m * nb));
  out.s.resize(static_cast<size_t>(m * nb));
  auto rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) QuantizeRow(x + r * k, k, &out.q[r * k], &out.d[r * nb], &out.s[r * nb]);
  };
  if (m * k < (1 << 16)) {
    rows(0, m);
    return;
  }
  const int64_t chunks = NumChunks(m, 8);
  const int64_t per = (m + chunks - 1) / chunks;
  ParallelFor(chunks, [&](int64_t c) { rows(c * per, std::min(m, (c + 1) * per)); });
}

// ---- weight formats ------------------------------------------------------------------------------

// Each format gives the 32 weights of block b of a row as bytes in input order, and says whether
// they are signed (q8_0) or unsigned nibbles (q4_x); the offset or minimum goes in `Correction`.
struct Q4_0 {
  static constexpr bool kSigned = false;
  static constexpr int kWords = 4;  // 4-byte words per block per row (the packed layout)
  static constexpr int64_t RowBytes(int64_t k) { return k / 2; }
  static constexpr bool kHasMin = false;
  static constexpr float kOffset = -8.f;  // w = d * (nibble - 8)
#if defined(QK_AVX2)
  static __m256i Load(const uint8_t* row, int64_t b) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * 16));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
  }
#endif
#if defined(__AVX512BW__) && defined(__AVX512DQ__)
  // Blocks b and b + 1 (32 bytes): the 64 nibbles in input order, block b in the low half.
  static __m512i Load2(const uint8_t* row, int64_t b) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 16));
    const __m256i mask = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_and_si256(packed, mask);                         // [lo b, lo b+1]
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);  // [hi b, hi b+1]
    const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);  // lo b, lo b+1, hi b, hi b+1
    return _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));                // lo b, hi b, lo b+1, hi b+1
  }
#endif
  static int32_t Scalar(const uint8_t* row, int64_t b, int i) {
    const uint8_t byte = row[b * 16 + (i & 15)];
    return i < 16 ? (byte & 0x0f) : (byte >> 4);
  }
};
struct Q4_1 : Q4_0 {
  static constexpr bool kHasMin = true;
  static constexpr float kOffset = 0.f;  // w = d * nibble + m
};
struct Q8_0 {
  static constexpr bool kSigned = true;
  static constexpr int kWords = 8;
  static constexpr int64_t RowBytes(int64_t k) { return k; }
  static constexpr bool kHasMin = false;
  static constexpr float kOffset = 0.f;
#if defined(QK_AVX2)
  static __m256i Load(const uint8_t* row, int64_t b) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * kBlock));
  }
#endif
#if defined(__AVX512BW__) && defined(__AVX512DQ__)
  static __m512i Load2(const uint8_t* row, int64_t b) { return _mm512_loadu_si512(row + b * kBlock); }
#endif
  static int32_t Scalar(const uint8_t* row, int64_t b, int i) {
    return static_cast<int8_t>(row[b * kBlock + i]);
  }
};

#if defined(QK_AVX2)
// Eight partial sums of w . x over one block (w unsigned, or signed when kSigned, x signed int8).
template <bool kSigned>
inline __m256i BlockDot(__m256i w, __m256i x) {
  if (kSigned) {  // u8 x s8 instructions: move w's sign onto x
    x = _mm256_sign_epi8(x, w);
    w = _mm256_sign_epi8(w, w);
  }
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
#endif
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#define QK_VNNI512 1
// p[0] in lanes 0-7, p[1] in lanes 8-15: the scales of two consecutive blocks.
inline __m512 PairBroadcast(const float* p) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  return _mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(0x3, p));
}
#endif

inline float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// The operands of one call, with the weight scales of the current output rows in float.
struct Problem {
  const QuantizedRows* x;  // rows [0, rows), rounded to int8
  const float* xf;         // [M, K]: rows [rows, total) are read as float
  const uint32_t* xb;      // [total - rows, K/2]: those rows as bfloat16 pairs (QK_BF16 only)
  const uint8_t* qs;       // [N, row bytes]
  const uint16_t* d;       // [N, nb] f16
  const uint16_t* m;       // [N, nb] f16 or null
  float* y;                // [M, N]
  int64_t rows, total, k, n, nb, row_bytes;
  bool packed;  // q4_x in the 16-row layout (see "Packed" below)
};

// y[m0 .. m0+MR, n0 .. n0+NR) for whole rows of K: MR activation rows share each weight block
// loaded, NR weight rows share each activation block. dw / cw: the NR rows' scales and
// correction factors (mins, or the q4_0 offset times the scale) as float [NR][nb].
template <typename W, int MR, int NR>
void Tile(const Problem& p, int64_t m0, int64_t n0, const float* dw, const float* cw) {
  const int64_t nb = p.nb, k = p.k;
  const int8_t* xq = p.x->q.data() + m0 * k;
  const float* xd = p.x->d.data() + m0 * nb;
  const float* xs = p.x->s.data() + m0 * nb;
  float out[MR][NR];
#if defined(QK_AVX2)
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  const uint8_t* wrow[NR];
  for (int j = 0; j < NR; ++j) wrow[j] = p.qs + (n0 + j) * p.row_bytes;
  int64_t b = 0;
#if defined(QK_VNNI512)
  // Two blocks per 512-bit instruction (lanes 0-7 block b, 8-15 block b + 1), folded into the
  // 256-bit sums before the last odd block.
  {
    __m512 acc2[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc2[i][j] = _mm512_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
      __m512i w[NR];
      __m512 sw[NR];
      __mmask64 neg[NR];
      for (int j = 0; j < NR; ++j) {
        w[j] = W::Load2(wrow[j], b);
        sw[j] = PairBroadcast(dw + j * nb + b);
        if constexpr (W::kSigned) {  // u8 x s8 instructions: move w's sign onto x
          neg[j] = _mm512_movepi8_mask(w[j]);
          w[j] = _mm512_abs_epi8(w[j]);
        }
      }
      for (int i = 0; i < MR; ++i) {
        const __m512i xv = _mm512_loadu_si512(xq + i * k + b * kBlock);
        const __m512 sx = PairBroadcast(xd + i * nb + b);
        for (int j = 0; j < NR; ++j) {
          __m512i x = xv;
          if constexpr (W::kSigned) x = _mm512_mask_sub_epi8(xv, neg[j], _mm512_setzero_si512(), xv);
          const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w[j], x));
          acc2[i][j] = _mm512_fmadd_ps(dot, _mm512_mul_ps(sx, sw[j]), acc2[i][j]);
        }
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j)
        acc[i][j] = _mm256_add_ps(_mm512_castps512_ps256(acc2[i][j]), _mm512_extractf32x8_ps(acc2[i][j], 1));
  }
#endif
  for (; b < nb; ++b) {
    __m256i w[NR];
    __m256 sw[NR];
    for (int j = 0; j < NR; ++j) {
      w[j] = W::Load(wrow[j], b);
      sw[j] = _mm256_broadcast_ss(dw + j * nb + b);
    }
    for (int i = 0; i < MR; ++i) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + i * k + b * kBlock));
      const __m256 sx = _mm256_broadcast_ss(xd + i * nb + b);
      for (int j = 0; j < NR; ++j) {
        const __m256 dot = _mm256_cvtepi32_ps(BlockDot<W::kSigned>(w[j], xv));
        acc[i][j] = _mm256_fmadd_ps(dot, _mm256_mul_ps(sx, sw[j]), acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i][j] = HSum(acc[i][j]);
#else
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      const uint8_t* wr = p.qs + (n0 + j) * p.row_bytes;
      float total = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t dot = 0;
        for (int t = 0; t < kBlock; ++t) dot += W::Scalar(wr, b, t) * xq[i * k + b * kBlock + t];
        total += static_cast<float>(dot) * xd[i * nb + b] * dw[j * nb + b];
      }
      out[i][j] = total;
    }
  }
#endif
  if (cw != nullptr) {  // + sum_b c[b] * s[b]: the q4_1 minimum or the q4_0 offset
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) {
        const float* c = cw + j * nb;
        const float* s = xs + i * nb;
        int64_t b = 0;
        float corr = 0.f;
#if defined(QK_AVX2)
        __m256 a = _mm256_setzero_ps();
        for (; b + 8 <= nb; b += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(c + b), _mm256_loadu_ps(s + b), a);
        corr = HSum(a);
#endif
        for (; b < nb; ++b) corr += c[b] * s[b];
        out[i][j] += corr;
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) p.y[(m0 + i) * p.n + n0 + j] = out[i][j];
}

template <typename W, int NR>
void RowsTile(const Problem& p, int64_t m0, int64_t mr, int64_t n0, const float* dw, const float* cw) {
  switch (mr) {
    case 4: Tile<W, 4, NR>(p, m0, n0, dw, cw); break;
    case 3: Tile<W, 3, NR>(p, m0, n0, dw, cw); break;
    case 2: Tile<W, 2, NR>(p, m0, n0, dw, cw); break;
    default: Tile<W, 1, NR>(p, m0, n0, dw, cw); break;
  }
}

// Output rows [n0, n1) for every activation row. Weight rows go in groups of kGroup: their scales
// are converted to float once, then every 4-row slice of the activations (L1-resident) meets the
// whole group two weight rows at a time (the group's weights stay in L1/L2).
template <typename W>
void OutputRows(const Problem& p, int64_t n0, int64_t n1) {
  constexpr int64_t kGroup = 16;
  const int64_t nb = p.nb;
  thread_local std::vector<float> scales;
  scales.resize(static_cast<size_t>(2 * kGroup * nb));
  float* dw = scales.data();
  float* cw = dw + kGroup * nb;
  const bool corr = W::kHasMin || W::kOffset != 0.f;
  for (int64_t g0 = n0; g0 < n1; g0 += kGroup) {
    const int64_t g1 = std::min(n1, g0 + kGroup);
    HalvesToFloats(p.d + g0 * nb, dw, (g1 - g0) * nb);
    if (W::kHasMin) {
      HalvesToFloats(p.m + g0 * nb, cw, (g1 - g0) * nb);
    } else if (corr) {
      for (int64_t i = 0; i < (g1 - g0) * nb; ++i) cw[i] = W::kOffset * dw[i];
    }
    for (int64_t m0 = 0; m0 < p.rows; m0 += 4) {
      const int64_t mr = std::min<int64_t>(4, p.rows - m0);
      int64_t j = g0;
#if defined(QK_VNNI512)
      for (; j + 4 <= g1; j += 4) {  // 32 registers: a 4 x 4 tile
        const int64_t off = (j - g0) * nb;
        RowsTile<W, 4>(p, m0, mr, j, dw + off, corr ? cw + off : nullptr);
      }
#endif
      for (; j + 2 <= g1; j += 2) {
        const int64_t off = (j - g0) * nb;
        RowsTile<W, 2>(p, m0, mr, j, dw + off, corr ? cw + off : nullptr);
      }
      if (j < g1) {
        const int64_t off = (j - g0) * nb;
        RowsTile<W, 1>(p, m0, mr, j, dw + off, corr ? cw + off : nullptr);
      }
    }
  }
}

// ---- float rows ----------------------------------------------------------------------------------

#if defined(QK_AVX2) && defined(__AVX512F__)
#define QK_AVX512 1
constexpr int64_t kPanel = 32;  // weight rows per dequantized panel: two 16-float vectors
constexpr int kFloatTile = 12;  // 32 vector registers: 24 accumulators
#else
constexpr int64_t kPanel = 16;  // two 8-float vectors
constexpr int kFloatTile = 4;   // 16 registers: 8 accumulators
#endif

// ---- packed q4_x: 16 weight rows interleaved by 4-byte word --------------------------------------
//
// model/quant.py's `pack16`: for each group of 16 rows and block b, the rows' 16 bytes split into
// 4 words (inputs 4c..4c+3 in the low nibbles, 16+4c.. in the high ones), stored word-major:
// qs [N/16][nb][4][16 rows][4 bytes]; d and m [N/16][nb][16]. One 64-byte load then holds word c
// of 16 rows, so a 512-bit vpdpbusd against an activation word broadcast to every lane sums four
// products for 16 outputs at once: the lanes are outputs, and each block's dot product is complete
// in one register, scaled once per block for all 16 (the row layout spends a convert, a multiply
// and an FMA per block per output pair). Engines pack where `InferenceAppPackedLayout()` says so.
#if defined(QK_VNNI512)
extern "C" int InferenceAppPackedLayout() { return 1; }
#else
extern "C" int InferenceAppPackedLayout() { return 0; }
#endif

inline int64_t ScaleIndex(const Problem& p, int64_t n, int64_t b) {
  return p.packed ? ((n >> 4) * p.nb + b) * 16 + (n & 15) : n * p.nb + b;
}

// Word c of block b for the 16 rows of the group holding row n (n % 16 == 0).
template <typename W>
inline const uint8_t* PackedWords(const Problem& p, int64_t n, int64_t b, int c) {
  return p.qs + (((n >> 4) * p.nb + b) * W::kWords + c) * 64;
}

#if defined(QK_VNNI512)
// y[m0 .. m0+MR, 16 g .. 16 g + 16): int8 rows against one packed group, per output one sum
// over the blocks (block dot product exact in int32, then scale, then the q4_1 minimum or q4_0
// offset term), the same at any MR.
template <typename W, int MR>
void PackedTile(const Problem& p, int64_t m0, int64_t g) {
  const int64_t nb = p.nb, k = p.k;
  const int8_t* xq = p.x->q.data() + m0 * k;
  const float* xd = p.x->d.data() + m0 * nb;
  const float* xs = p.x->s.data() + m0 * nb;
  const bool corr = W::kHasMin || W::kOffset != 0.f;
  const __m512i mask = _mm512_set1_epi8(0x0f);
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    // q4_x: lo[c] holds inputs 4c..4c+3 and hi[c] 16+4c..; q8_0: the 8 words are signed bytes
    // (the operand vpdpbusd takes as signed), the activations made unsigned by adding 128, whose
    // contribution, 128 x the block's weight sum per row, comes off again.
    __m512i lo[4], hi[4], bias = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      const __m512i w = _mm512_loadu_si512(PackedWords<W>(p, 16 * g, b, c));
      if constexpr (W::kSigned) {
        lo[c] = w;
        hi[c] = _mm512_loadu_si512(PackedWords<W>(p, 16 * g, b, c + 4));
        bias = _mm512_dpbusd_epi32(bias, _mm512_set1_epi8(1), lo[c]);
        bias = _mm512_dpbusd_epi32(bias, _mm512_set1_epi8(1), hi[c]);
      } else {
        lo[c] = _mm512_and_si512(w, mask);
        hi[c] = _mm512_and_si512(_mm512_srli_epi16(w, 4), mask);
      }
    }
    if constexpr (W::kSigned) bias = _mm512_slli_epi32(bias, 7);
    const int64_t si = (g * nb + b) * 16;
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.d + si)));
    __m512 cw = _mm512_setzero_ps();
    if (W::kHasMin) {
      cw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.m + si)));
    } else if (corr) {
      cw = _mm512_mul_ps(dw, _mm512_set1_ps(W::kOffset));
    }
    for (int i = 0; i < MR; ++i) {
      int32_t words[8];
      std::memcpy(words, xq + i * k + b * kBlock, sizeof(words));
      __m512i dot = _mm512_setzero_si512();
      if constexpr (W::kSigned) {
        const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));  // x + 128 as u8
        for (int c = 0; c < 4; ++c) {
          dot = _mm512_dpbusd_epi32(dot, _mm512_xor_si512(_mm512_set1_epi32(words[c]), flip), lo[c]);
          dot = _mm512_dpbusd_epi32(dot, _mm512_xor_si512(_mm512_set1_epi32(words[4 + c]), flip), hi[c]);
        }
        dot = _mm512_sub_epi32(dot, bias);
      } else {
        for (int c = 0; c < 4; ++c) {
          dot = _mm512_dpbusd_epi32(dot, lo[c], _mm512_set1_epi32(words[c]));
          dot = _mm512_dpbusd_epi32(dot, hi[c], _mm512_set1_epi32(words[4 + c]));
        }
      }
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, _mm512_set1_ps(xd[i * nb + b])), acc[i]);
      if (corr) acc[i] = _mm512_fmadd_ps(cw, _mm512_set1_ps(xs[i * nb + b]), acc[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(p.y + (m0 + i) * p.n + 16 * g, acc[i]);
}

// Output rows [n0, n1) (multiples of 16) for the int8 rows, in the packed layout.
template <typename W>
void PackedOutputRows(const Problem& p, int64_t n0, int64_t n1) {
  constexpr int kTile = 8;
  for (int64_t g = n0 / 16; g < n1 / 16; ++g) {
    for (int64_t m0 = 0; m0 < p.rows; m0 += kTile) {
      switch (std::min<int64_t>(kTile, p.rows - m0)) {
        case 8: PackedTile<W, 8>(p, m0, g); break;
        case 7: PackedTile<W, 7>(p, m0, g); break;
        case 6: PackedTile<W, 6>(p, m0, g); break;
        case 5: PackedTile<W, 5>(p, m0, g); break;
        case 4: PackedTile<W, 4>(p, m0, g); break;
        case 3: PackedTile<W, 3>(p, m0, g); break;
        case 2: PackedTile<W, 2>(p, m0, g); break;
        default: PackedTile<W, 1>(p, m0, g); break;
      }
    }
  }
}
#endif

// Weight row n dequantized: as model/quant.py's `dequantize` (a multiply, then an add; no FMA).
template <typename W>
void DequantizeRow(const Problem& p, int64_t n, float* out) {
  const uint8_t* row = p.qs + n * p.row_bytes;
  for (int64_t b = 0; b < p.nb; ++b) {
    const float d = HalfToFloat(p.d[n * p.nb + b]);
    const float m = W::kHasMin ? HalfToFloat(p.m[n * p.nb + b]) : 0.f;
    float* o = out + b * kBlock;
    for (int t = 0; t < kBlock; ++t) {
      const float q = static_cast<float>(W::Scalar(row, b, t));
      if (W::kHasMin) {
        o[t] = d * q + m;
      } else if (W::kOffset != 0.f) {
        o[t] = d * (q + W::kOffset);
      } else {
        o[t] = q * d;
      }
    }
  }
}

// Weight rows [n0, n0 + nr) as float32 [K][kPanel] (k-major: the weights one input meets are
// adjacent); rows past nr are zero.
#if defined(QK_AVX512)
// Vectorized across the panel's rows: one gather collects a 4-byte word at the same offset of 16
// rows, i.e. 4 (q8_0) or 8 (q4_x) inputs of each, and each input then becomes one vector of 16
// weights, stored where the microkernel reads it.
template <typename W>
void DequantizePanel(const Problem& p, int64_t n0, int64_t nr, float* panel) {
  const int64_t nb = p.nb;
  thread_local std::vector<float> tables;
  tables.assign(static_cast<size_t>(2 * nb * kPanel), 0.f);
  float* ds = tables.data();          // [nb][kPanel] block scales; 0 past nr
  float* ms = ds + nb * kPanel;       // [nb][kPanel] q4_1 minimums
  for (int64_t j = 0; j < nr; ++j) {
    for (int64_t b = 0; b < nb; ++b) {
      ds[b * kPanel + j] = HalfToFloat(p.d[ScaleIndex(p, n0 + j, b)]);
      if (W::kHasMin) ms[b * kPanel + j] = HalfToFloat(p.m[ScaleIndex(p, n0 + j, b)]);
    }
  }
  const uint8_t* base = p.qs + n0 * p.row_bytes;
  const __m512 offset = _mm512_set1_ps(W::kOffset);
  for (int64_t h = 0; h < kPanel; h += 16) {
    if (p.packed && h >= nr) {  // whole groups of 16: a missing one is zeros
      for (int64_t t = 0; t < p.k; ++t) _mm512_store_ps(panel + t * kPanel + h, _mm512_setzero_ps());
      continue;
    }
    alignas(64) int32_t rows[16];
    for (int i = 0; i < 16; ++i) rows[i] = static_cast<int32_t>(std::min<int64_t>(h + i, nr - 1) * p.row_bytes);
    const __m512i idx = _mm512_load_si512(rows);
    for (int64_t b = 0; b < nb; ++b) {
      const __m512 d = _mm512_loadu_ps(ds + b * kPanel + h);
      const __m512 m = _mm512_loadu_ps(ms + b * kPanel + h);
      float* out = panel + b * kBlock * kPanel + h;  // input t of block b: out + t * kPanel
      if constexpr (W::kSigned) {                    // q8_0: 32 signed bytes per block
        for (int c = 0; c < 8; ++c) {
          const __m512i g = p.packed ? _mm512_loadu_si512(PackedWords<W>(p, n0 + h, b, c))
                                     : _mm512_i32gather_epi32(idx, base + b * kBlock + 4 * c, 1);
          for (int e = 0; e < 4; ++e) {
            const __m512i q = _mm512_srai_epi32(_mm512_slli_epi32(g, 24 - 8 * e), 24);
            _mm512_store_ps(out + (4 * c + e) * kPanel, _mm512_mul_ps(_mm512_cvtepi32_ps(q), d));
          }
        }
      } else {  // q4_x: 16 bytes per block, input t in the low nibble of byte t, t + 16 in the high
        const __m512i mask = _mm512_set1_epi32(0x0f);
        for (int c = 0; c < 4; ++c) {
          // packed: the 16 rows' word c of block b are adjacent
          const __m512i g = p.packed ? _mm512_loadu_si512(PackedWords<W>(p, n0 + h, b, c))
                                     : _mm512_i32gather_epi32(idx, base + b * 16 + 4 * c, 1);
          for (int e = 0; e < 8; ++e) {
            const __m512i q = _mm512_and_si512(_mm512_srli_epi32(g, 4 * e), mask);
            const __m512 qf = _mm512_cvtepi32_ps(q);
            const __m512 w = W::kHasMin ? _mm512_add_ps(_mm512_mul_ps(d, qf), m)
                                        : _mm512_mul_ps(d, _mm512_add_ps(qf, offset));
            const int t = 4 * c + e / 2 + (e % 2) * 16;  // nibble e: byte e / 2, low or high half
            _mm512_store_ps(out + t * kPanel, w);
          }
        }
      }
    }
  }
}
#elif defined(QK_AVX2)
// The same with 8-row gathers.
template <typename W>
void DequantizePanel(const Problem& p, int64_t n0, int64_t nr, float* panel) {
  const int64_t nb = p.nb;
  thread_local std::vector<float> tables;
  tables.assign(static_cast<size_t>(2 * nb * kPanel), 0.f);
  float* ds = tables.data();
  float* ms = ds + nb * kPanel;
  for (int64_t j = 0; j < nr; ++j) {
    for (int64_t b = 0; b < nb; ++b) {
      ds[b * kPanel + j] = HalfToFloat(p.d[(n0 + j) * nb + b]);
      if (W::kHasMin) ms[b * kPanel + j] = HalfToFloat(p.m[(n0 + j) * nb + b]);
    }
  }
  const uint8_t* base = p.qs + n0 * p.row_bytes;
  const __m256 offset = _mm256_set1_ps(W::kOffset);
  for (int64_t h = 0; h < kPanel; h += 8) {
    alignas(32) int32_t rows[8];
    for (int i = 0; i < 8; ++i) rows[i] = static_cast<int32_t>(std::min<int64_t>(h + i, nr - 1) * p.row_bytes);
    const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(rows));
    for (int64_t b = 0; b < nb; ++b) {
      const __m256 d = _mm256_loadu_ps(ds + b * kPanel + h);
      const __m256 m = _mm256_loadu_ps(ms + b * kPanel + h);
      float* out = panel + b * kBlock * kPanel + h;
      if constexpr (W::kSigned) {
        for (int c = 0; c < 8; ++c) {
          const __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(base + b * kBlock + 4 * c), idx, 1);
          for (int e = 0; e < 4; ++e) {
            const __m256i q = _mm256_srai_epi32(_mm256_slli_epi32(g, 24 - 8 * e), 24);
            _mm256_store_ps(out + (4 * c + e) * kPanel, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
          }
        }
      } else {
        const __m256i mask = _mm256_set1_epi32(0x0f);
        for (int c = 0; c < 4; ++c) {
          const __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(base + b * 16 + 4 * c), idx, 1);
          for (int e = 0; e < 8; ++e) {
            const __m256 qf = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(g, 4 * e), mask));
            const __m256 w = W::kHasMin ? _mm256_add_ps(_mm256_mul_ps(d, qf), m)
                                        : _mm256_mul_ps(d, _mm256_add_ps(qf, offset));
            _mm256_store_ps(out + (4 * c + e / 2 + (e % 2) * 16) * kPanel, w);
          }
        }
      }
    }
  }
}
#else
template <typename W>
void DequantizePanel(const Problem& p, int64_t n0, int64_t nr, float* panel) {
  thread_local std::vector<float> row;
  row.resize(static_cast<size_t>(p.k));
  for (int64_t j = 0; j < kPanel; ++j) {
    if (j < nr) {
      DequantizeRow<W>(p, n0 + j, row.data());
      for (int64_t kk = 0; kk < p.k; ++kk) panel[kk * kPanel + j] = row[kk];
    } else {
      for (int64_t kk = 0; kk < p.k; ++kk) panel[kk * kPanel + j] = 0.f;
    }
  }
}
#endif

#if defined(QK_AVX512) && defined(__AVX512BF16__)
#define QK_BF16 1
// CPUs with AVX512_BF16 multiply the prompt rows in bfloat16 with float32 sums: one vdpbf16ps does
// 32 multiply-adds where an FMA does 16. The weights (4-5 bit values times a scale) and the
// activations are rounded to bfloat16 (8 significant bits, like the int8 activations of decode
// rows); every sum stays float32 in a fixed order.
extern "C" int InferenceAppPromptRowsBf16() { return 1; }

// x[k], x[k + 1] as one bfloat16 pair per 32 bits, for rows of K inputs (K even).
void ToBf16Pairs(const float* x, int64_t n, uint32_t* out) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(out + i / 2, (__m512i)v);
  }
  for (; i < n; i += 2) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_setzero_ps(), _mm512_maskz_loadu_ps(0x3, x + i));
    out[i / 2] = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm512_castsi512_si128((__m512i)v)));
  }
}

// The float panel [K][kPanel] as bfloat16 pairs [K/2][kPanel]: (w[2q][j], w[2q + 1][j]) per 32 bits.
void PanelToBf16(const float* panel, int64_t k, uint32_t* out) {
  // _mm512_set_epi16 lists elements from the highest: element 2i is i, element 2i + 1 is 16 + i
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                              22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int64_t q = 0; q < k / 2; ++q) {
    for (int64_t h = 0; h < kPanel; h += 16) {
      const __m512 even = _mm512_load_ps(panel + 2 * q * kPanel + h);
      const __m512 odd = _mm512_load_ps(panel + (2 * q + 1) * kPanel + h);
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(odd, even);  // even in the low half
      _mm512_store_si512(out + q * kPanel + h, _mm512_permutexvar_epi16(interleave, both));
    }
  }
}
#else
extern "C" int InferenceAppPromptRowsBf16() { return 0; }
#endif

// y[m0 .. m0+MR, n0 .. n0+nr) = x rows times the panel: per output one FMA chain over k (with
// bfloat16: one chain over the pairs of k).
template <int MR>
void FloatTile(const Problem& p, int64_t m0, int64_t n0, int64_t nr, const void* panel_data) {
  const int64_t k = p.k;
  float out[MR][kPanel];
#if defined(QK_BF16)
  const uint32_t* panel = static_cast<const uint32_t*>(panel_data);
  const uint32_t* x = p.xb + (m0 - p.rows) * (k / 2);
  __m512 acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t q = 0; q < k / 2; ++q) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(panel + q * kPanel);
    const __m512bh b1 = (__m512bh)_mm512_load_si512(panel + q * kPanel + 16);
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[i * (k / 2) + q]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
    }
  }
  for (int i = 0; i < MR; ++i) {  // through `out`: one tail for every variant, and partial panels
    _mm512_storeu_ps(out[i], acc[i][0]);
    _mm512_storeu_ps(out[i] + 16, acc[i][1]);
  }
#elif defined(QK_AVX512)
  const float* panel = static_cast<const float*>(panel_data);
  const float* x = p.xf + m0 * k;
  __m512 acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m512 b0 = _mm512_load_ps(panel + kk * kPanel);
    const __m512 b1 = _mm512_load_ps(panel + kk * kPanel + 16);
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(x[i * k + kk]);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {  // through `out`: one tail for every variant, and partial panels
    _mm512_storeu_ps(out[i], acc[i][0]);
    _mm512_storeu_ps(out[i] + 16, acc[i][1]);
  }
#elif defined(QK_AVX2)
  const float* panel = static_cast<const float*>(panel_data);
  const float* x = p.xf + m0 * k;
  __m256 acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m256 b0 = _mm256_load_ps(panel + kk * kPanel);
    const __m256 b1 = _mm256_load_ps(panel + kk * kPanel + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(x + i * k + kk);
      acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(out[i], acc[i][0]);
    _mm256_storeu_ps(out[i] + 8, acc[i][1]);
  }
#else
  const float* panel = static_cast<const float*>(panel_data);
  const float* x = p.xf + m0 * k;
  for (int i = 0; i < MR; ++i) {
    for (int64_t j = 0; j < nr; ++j) {
      float a = 0.f;
      for (int64_t kk = 0; kk < k; ++kk) a = std::fma(x[i * k + kk], panel[kk * kPanel + j], a);
      out[i][j] = a;
    }
  }
#endif
  for (int i = 0; i < MR; ++i)
    for (int64_t j = 0; j < nr; ++j) p.y[(m0 + i) * p.n + n0 + j] = out[i][j];
}

template <int MR>
void FloatTiles(const Problem& p, int64_t n0, int64_t nr, const void* panel) {
  int64_t m0 = p.rows;
  for (; m0 + MR <= p.total; m0 += MR) FloatTile<MR>(p, m0, n0, nr, panel);
  if constexpr (MR > 1) {
    if (m0 < p.total) {
      // the remainder: one smaller tile (same FMA chain per output, so the same bits)
      switch (p.total - m0) {
#define QK_REMAINDER(r) \
  case r:               \
    if constexpr (r < MR) FloatTile<r>(p, m0, n0, nr, panel); \
    break;
        QK_REMAINDER(1) QK_REMAINDER(2) QK_REMAINDER(3) QK_REMAINDER(4) QK_REMAINDER(5)
        QK_REMAINDER(6) QK_REMAINDER(7) QK_REMAINDER(8) QK_REMAINDER(9) QK_REMAINDER(10)
        QK_REMAINDER(11)
#undef QK_REMAINDER
        default: break;
      }
    }
  }
}

// Output rows [n0, n1) for the float rows, one dequantized panel at a time.
template <typename W>
void FloatOutputRows(const Problem& p, int64_t n0, int64_t n1) {
  thread_local std::vector<float, std::allocator<float>> storage;
  storage.resize(static_cast<size_t>(p.k * kPanel + 16));
  // 64-byte aligned for the panel loads
  float* panel = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t{63});
  for (int64_t j = n0; j < n1; j += kPanel) {
    const int64_t nr = std::min(kPanel, n1 - j);
    DequantizePanel<W>(p, j, nr, panel);
#if defined(QK_BF16)
    thread_local std::vector<uint32_t> pairs;
    pairs.resize(static_cast<size_t>(p.k / 2 * kPanel + 16));
    uint32_t* bpanel =
        reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(pairs.data()) + 63) & ~uintptr_t{63});
    PanelToBf16(panel, p.k, bpanel);
    FloatTiles<kFloatTile>(p, j, nr, bpanel);
#else
    FloatTiles<kFloatTile>(p, j, nr, panel);
#endif
  }
}

// The int8 rows' outputs [n0, n1), in the layout the weights come in.
template <typename W>
void IntRows(const Problem& p, int64_t n0, int64_t n1) {
#if defined(QK_VNNI512)
  if (p.packed) return PackedOutputRows<W>(p, n0, n1);
#endif
  OutputRows<W>(p, n0, n1);
}

template <typename W>
void QuantMatmul(const float* x, const uint8_t* qs, const uint16_t* d, const uint16_t* m, float* y,
                 int64_t total, int64_t float_from, int64_t k, int64_t n, bool packed = false) {
  const int64_t rows = std::clamp<int64_t>(float_from, 0, total);
  thread_local QuantizedRows xq;
  QuantizeRows(x, rows, k, xq);
  const uint32_t* xb = nullptr;
#if defined(QK_BF16)
  thread_local std::vector<uint32_t> pairs;
  if (total > rows) {
    pairs.resize(static_cast<size_t>((total - rows) * k / 2));
    for (int64_t r = rows; r < total; ++r) ToBf16Pairs(x + r * k, k, pairs.data() + (r - rows) * (k / 2));
    xb = pairs.data();
  }
#endif
  const Problem p{&xq, x, xb, qs, d, m, y, rows, total, k, n, k / kBlock, W::RowBytes(k), packed};
  if (rows == total) {
    // Ranges of output rows claimed dynamically; up to 16, so that an odd count (3 ranges of
    // a 960-row matrix on 2 threads) does not leave a thread idle for a third of the call.
    const int64_t min_rows = rows <= 4 ? 64 : 32;
    const int64_t chunks = NumChunks(n, min_rows);
    const int64_t unit = packed ? 16 : 2;  // whole packed groups, or whole 2-row tiles
    const int64_t per = ((n + chunks - 1) / chunks + unit - 1) / unit * unit;
    ParallelFor(chunks, [&](int64_t c) {
      const int64_t n0 = c * per, n1 = std::min(n, n0 + per);
      if (n0 < n1) IntRows<W>(p, n0, n1);
    });
    return;
  }
  // Float rows: a chunk per panel or two (claimed dynamically, so the threads stay balanced);
  // each chunk also runs the int8 rows for its outputs.
  const int64_t per = kPanel;
  const int64_t chunks = (n + per - 1) / per;
  ParallelFor(chunks, [&](int64_t c) {
    const int64_t n0 = c * per, n1 = std::min(n, n0 + per);
    if (rows > 0) IntRows<W>(p, n0, n1);
    FloatOutputRows<W>(p, n0, n1);
  });
}

template <typename W, ffi::DataType QT>
ffi::Error Check(ffi::Buffer<ffi::F32>& x, ffi::Buffer<QT>& qs, ffi::Buffer<ffi::F16>& d,
                 const ffi::Buffer<ffi::F16>* m, const char* name) {
  auto xd = x.dimensions();
  auto qd = qs.dimensions();
  auto dd = d.dimensions();
  if (xd.size() != 2 || qd.size() != 2 || dd.size() != 2 || xd[1] % kBlock != 0 ||
      qd[1] != W::RowBytes(xd[1]) || dd[0] != qd[0] || dd[1] != xd[1] / kBlock ||
      (m != nullptr && (m->dimensions().size() != 2 || m->dimensions()[0] != dd[0] ||
                        m->dimensions()[1] != dd[1]))) {
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": expected x[M,K] (K % 32 == 0), qs[N, row bytes], d[N,K/32]");
  }
  return ffi::Error::Success();
}

// One call of any format and layout. The packed layout (`model/quant.pack16`) has the same
// shapes, N a multiple of 16, and runs only where the library has its kernel.
template <typename W, ffi::DataType QT>
ffi::Error RunMatmul(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::S32>& float_from, ffi::Buffer<QT>& qs,
                     ffi::Buffer<ffi::F16>& d, const ffi::Buffer<ffi::F16>* m, ffi::ResultBuffer<ffi::F32>& y,
                     bool packed) {
  ffi::Error err = Check<W, QT>(x, qs, d, m, packed ? "quant_matmul (16-row packed)" : "quant_matmul");
  if (err.failure()) return err;
  if (packed && (!InferenceAppPackedLayout() || qs.dimensions()[0] % 16 != 0)) {
    return ffi::Error::InvalidArgument("quant_matmul: 16-row packed weights need N % 16 == 0 and AVX-512 VNNI");
  }
  QuantMatmul<W>(x.typed_data(), reinterpret_cast<const uint8_t*>(qs.untyped_data()),
                 reinterpret_cast<const uint16_t*>(d.untyped_data()),
                 m == nullptr ? nullptr : reinterpret_cast<const uint16_t*>(m->untyped_data()), y->typed_data(),
                 x.dimensions()[0], float_from.typed_data()[0], x.dimensions()[1], qs.dimensions()[0], packed);
  return ffi::Error::Success();
}

// q4_0 and q8_0: no minimums.
template <typename W, ffi::DataType QT, bool kPacked>
ffi::Error ScaledImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> float_from, ffi::Buffer<QT> qs,
                      ffi::Buffer<ffi::F16> d, ffi::ResultBuffer<ffi::F32> y) {
  return RunMatmul<W, QT>(x, float_from, qs, d, nullptr, y, kPacked);
}

template <bool kPacked>
ffi::Error Q4_1Impl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> float_from, ffi::Buffer<ffi::U8> qs,
                    ffi::Buffer<ffi::F16> d, ffi::Buffer<ffi::F16> m, ffi::ResultBuffer<ffi::F32> y) {
  return RunMatmul<Q4_1, ffi::U8>(x, float_from, qs, d, &m, y, kPacked);
}

}  // namespace

// The bindings (argument and result types) are deduced from the implementations' signatures.
XLA_FFI_DEFINE_HANDLER_SYMBOL(QuantMatmulQ4_0, (ScaledImpl<Q4_0, ffi::U8, false>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(QuantMatmulQ4_1, Q4_1Impl<false>);
XLA_FFI_DEFINE_HANDLER_SYMBOL(QuantMatmulQ8_0, (ScaledImpl<Q8_0, ffi::S8, false>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(QuantMatmulQ4_0x16, (ScaledImpl<Q4_0, ffi::U8, true>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(QuantMatmulQ4_1x16, Q4_1Impl<true>);
XLA_FFI_DEFINE_HANDLER_SYMBOL(QuantMatmulQ8_0x16, (ScaledImpl<Q8_0, ffi::S8, true>));
