// Flash attention: the fp32 kernels (tiles of query rows against tiles of keys staged in shared
// memory as fp32, online softmax, a three-launch backward) and the dispatch of bf16 to tensor cores.
#include <cmath>
#include <type_traits>

#include "core/cuda/attention.h"
#include "core/cuda/attention_internal.h"
#include "core/cuda/block_reduce.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/device_sm.h"
#include "core/cuda/env_switch.h"
#include "core/cuda/launch.h"

namespace moe::cuda {
namespace {

using attention_detail::HeadStrides;
using attention_detail::strides_of;

constexpr int kThreads = 128;
constexpr int kBc = 32;        // keys per tile: one per lane in the score phase
constexpr int kBrFwd = 16;     // query rows per forward block
constexpr int kBrBwd = 8;      // query rows per backward tile (two more operands in shared memory)
constexpr int kLdp = kBc + 1;  // padded row of the score tiles
// Output elements per thread kept in registers (the accumulators) at the largest head dim.
constexpr int kFwdAcc = kBrFwd * kFlashMaxHeadDim / kThreads;
constexpr int kKvAcc = kBc * kFlashMaxHeadDim / kThreads;
constexpr int kDqAcc = kBrBwd * kFlashMaxHeadDim / kThreads;

__device__ __forceinline__ long min_long(long a, long b) { return a < b ? a : b; }

// rows x D of a [S, D] head starting at row r0 into dst (row stride ld), zero past the end.
template <class T>
__device__ void load_tile(const T* src, long rs, long r0, long valid, int rows, int D, float* dst, int ld,
                          float mul = 1.0f) {
  for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
    const int r = i / D, d = i % D;
    dst[r * ld + d] = r < valid ? to_float(src[(r0 + r) * rs + d]) * mul : 0.0f;
  }
}

__device__ __forceinline__ float dot_row(const float* a, const float* b, int D) {
  float s = 0.0f;
  for (int d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}

template <class T>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(const T* q, const T* k, const T* v, T* o, float* lse,
                                                                 HeadStrides hs, long S, int D, float scale) {
  MOE_DYNAMIC_SHARED(float, smem);
  float* sQ = smem;                // [kBrFwd][D], pre-scaled
  float* sK = sQ + kBrFwd * D;     // [kBc][D + 1]: lanes read different rows, same column
  float* sV = sK + kBc * (D + 1);  // [kBc][D]
  float* sP = sV + kBc * D;        // [kBrFwd][kLdp]: scores, then probabilities
  float* sM = sP + kBrFwd * kLdp;  // running max per row
  float* sL = sM + kBrFwd;         // running sum per row
  float* sA = sL + kBrFwd;         // this tile's rescale factor per row
  const long head = blockIdx.y, r0 = long(blockIdx.x) * kBrFwd, rows = min_long(kBrFwd, S - r0);
  const long base = hs.base(head, S, D), rs = hs.row;
  const int tid = threadIdx.x;

  load_tile(q + base, rs, r0, rows, kBrFwd, D, sQ, D, scale);
  if (tid < kBrFwd) sM[tid] = -INFINITY, sL[tid] = 0.0f;
  float acc[kFwdAcc];
  MOE_UNROLL
  for (int e = 0; e < kFwdAcc; ++e) acc[e] = 0.0f;

  const long last_row = r0 + rows - 1;
  for (long c0 = 0; c0 <= last_row; c0 += kBc) {
    const long cols = min_long(kBc, S - c0);
    __syncthreads();  // the previous tile's readers of sK / sV / sP are done
    load_tile(k + base, rs, c0, cols, kBc, D, sK, D + 1);
    load_tile(v + base, rs, c0, cols, kBc, D, sV, D);
    __syncthreads();
    for (int i = tid; i < kBrFwd * kBc; i += kThreads) {
      const int r = i / kBc, j = i % kBc;
      const bool visible = r < rows && c0 + j <= r0 + r;  // also keeps j < cols
      sP[r * kLdp + j] = visible ? dot_row(sQ + r * D, sK + j * (D + 1), D) : -INFINITY;
    }
    __syncthreads();
    if (tid < kBrFwd) {  // online softmax, one thread per row
      float* row = sP + tid * kLdp;
      float mt = -INFINITY;
      for (int j = 0; j < kBc; ++j) mt = fmaxf(mt, row[j]);
      const float m_old = sM[tid], m_new = fmaxf(m_old, mt);
      float alpha = 1.0f, sum = 0.0f;
      if (m_new == -INFINITY) {  // no visible key yet (a padding row): nothing to add
        for (int j = 0; j < kBc; ++j) row[j] = 0.0f;
      } else {
        alpha = expf(m_old - m_new);  // 0 on the first visible tile (m_old = -inf)
        for (int j = 0; j < kBc; ++j) {
          const float p = expf(row[j] - m_new);
          row[j] = p;
          sum += p;
        }
      }
      sL[tid] = sL[tid] * alpha + sum;
      sM[tid] = m_new;
      sA[tid] = alpha;
    }
    __syncthreads();
    MOE_UNROLL
    for (int e = 0; e < kFwdAcc; ++e) {
      const int i = tid + e * kThreads;
      if (i < kBrFwd * D) {
        const int r = i / D, d = i % D;
        float a = acc[e] * sA[r];
        for (int j = 0; j < kBc; ++j) a += sP[r * kLdp + j] * sV[j * D + d];
        acc[e] = a;
      }
    }
  }
  MOE_UNROLL
  for (int e = 0; e < kFwdAcc; ++e) {
    const int i = tid + e * kThreads;
    if (i < kBrFwd * D && i / D < rows) o[base + (r0 + i / D) * rs + i % D] = from_float<T>(acc[e] / sL[i / D]);
  }
  if (tid < rows) lse[head * S + r0 + tid] = sM[tid] + logf(sL[tid]);
}

// delta[row] = sum_d dout[row, d] * out[row, d] (= sum_j P dP of the row): one warp per row.
template <class T>
__global__ void __launch_bounds__(kThreads)
    flash_delta_kernel(const T* out, const T* dout, float* delta, HeadStrides hs, long rows, long S, int D) {
  const long row = long(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps leave together
  const long at = hs.base(row / S, S, D) + row % S * hs.row;
  float s = 0.0f;
  for (int d = threadIdx.x % 32; d < D; d += 32) s += to_float(out[at + d]) * to_float(dout[at + d]);
  s = warp_sum(s);
  if (threadIdx.x % 32 == 0) delta[row] = s;
}

// Shared operands of the two backward kernels: a query tile (Q, dO, lse, delta) of kBrBwd rows and a
// key tile (K, V) of kBc keys, and the tile's P and dS = P (dP - delta).
struct BwdTiles {
  float *sQ, *sdO, *sK, *sV, *sP, *sdS, *sLse, *sDelta;
  __device__ BwdTiles(float* smem, int D) {
    sQ = smem;
    sdO = sQ + kBrBwd * D;
    sK = sdO + kBrBwd * D;
    sV = sK + kBc * (D + 1);
    sP = sV + kBc * (D + 1);
    sdS = sP + kBrBwd * kLdp;
    sLse = sdS + kBrBwd * kLdp;
    sDelta = sLse + kBrBwd;
  }
};
constexpr size_t bwd_shared_floats(int D) {
  return size_t(2 * kBrBwd * D + 2 * kBc * (D + 1) + 2 * kBrBwd * kLdp + 2 * kBrBwd);
}

template <class T>
__device__ void load_query_tile(const BwdTiles& t, const T* q, const T* dout, const float* lse, const float* delta,
                                long base, long rs, long row_base, long r0, long rows, int D) {
  load_tile(q + base, rs, r0, rows, kBrBwd, D, t.sQ, D);
  load_tile(dout + base, rs, r0, rows, kBrBwd, D, t.sdO, D);
  if (threadIdx.x < kBrBwd) {
    const bool ok = long(threadIdx.x) < rows;
    t.sLse[threadIdx.x] = ok ? lse[row_base + r0 + threadIdx.x] : 0.0f;
    t.sDelta[threadIdx.x] = ok ? delta[row_base + r0 + threadIdx.x] : 0.0f;
  }
}

// P and dS of query rows r0.. against keys c0.. (zero where masked or out of range).
__device__ void probabilities_and_ds(const BwdTiles& t, long r0, long rows, long c0, long cols, int D, float scale) {
  for (int i = threadIdx.x; i < kBrBwd * kBc; i += kThreads) {
    const int r = i / kBc, j = i % kBc;
    float p = 0.0f, ds = 0.0f;
    if (r < rows && j < cols && c0 + j <= r0 + r) {
      p = expf(scale * dot_row(t.sQ + r * D, t.sK + j * (D + 1), D) - t.sLse[r]);
      ds = p * (dot_row(t.sdO + r * D, t.sV + j * (D + 1), D) - t.sDelta[r]);
    }
    t.sP[r * kLdp + j] = p;
    t.sdS[r * kLdp + j] = ds;
  }
}

// One block per key tile: dV = sum_rows P^T dO, dK = scale sum_rows dS^T Q over the rows that see it.
template <class T>
__global__ void __launch_bounds__(kThreads)
    flash_dkdv_kernel(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk,
                      T* dv, HeadStrides hs, long S, int D, float scale) {
  MOE_DYNAMIC_SHARED(float, smem);
  const BwdTiles t(smem, D);
  const long head = blockIdx.y, c0 = long(blockIdx.x) * kBc, cols = min_long(kBc, S - c0);
  const long base = hs.base(head, S, D), rs = hs.row, row_base = head * S;
  const int tid = threadIdx.x;
  load_tile(k + base, rs, c0, cols, kBc, D, t.sK, D + 1);
  load_tile(v + base, rs, c0, cols, kBc, D, t.sV, D + 1);
  float acc_k[kKvAcc], acc_v[kKvAcc];
  MOE_UNROLL
  for (int e = 0; e < kKvAcc; ++e) acc_k[e] = acc_v[e] = 0.0f;
  for (long r0 = c0; r0 < S; r0 += kBrBwd) {  // rows before c0 see none of these keys
    const long rows = min_long(kBrBwd, S - r0);
    __syncthreads();
    load_query_tile(t, q, dout, lse, delta, base, rs, row_base, r0, rows, D);
    __syncthreads();
    probabilities_and_ds(t, r0, rows, c0, cols, D, scale);
    __syncthreads();
    MOE_UNROLL
    for (int e = 0; e < kKvAcc; ++e) {
      const int i = tid + e * kThreads;
      if (i < kBc * D) {
        const int j = i / D, d = i % D;
        float ak = acc_k[e], av = acc_v[e];
        for (int r = 0; r < kBrBwd; ++r) {
          av += t.sP[r * kLdp + j] * t.sdO[r * D + d];
          ak += t.sdS[r * kLdp + j] * t.sQ[r * D + d];
        }
        acc_k[e] = ak, acc_v[e] = av;
      }
    }
  }
  MOE_UNROLL
  for (int e = 0; e < kKvAcc; ++e) {
    const int i = tid + e * kThreads;
    if (i < kBc * D && i / D < cols) {
      const long at = base + (c0 + i / D) * rs + i % D;
      dk[at] = from_float<T>(acc_k[e] * scale);
      dv[at] = from_float<T>(acc_v[e]);
    }
  }
}

// One block per query tile: dQ = scale sum_keys dS K over the keys up to the tile's last row.
template <class T>
__global__ void __launch_bounds__(kThreads)
    flash_dq_kernel(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dq,
                    HeadStrides hs, long S, int D, float scale) {
  MOE_DYNAMIC_SHARED(float, smem);
  const BwdTiles t(smem, D);
  const long head = blockIdx.y, r0 = long(blockIdx.x) * kBrBwd, rows = min_long(kBrBwd, S - r0);
  const long base = hs.base(head, S, D), rs = hs.row, row_base = head * S;
  const int tid = threadIdx.x;
  load_query_tile(t, q, dout, lse, delta, base, rs, row_base, r0, rows, D);
  float acc[kDqAcc];
  MOE_UNROLL
  for (int e = 0; e < kDqAcc; ++e) acc[e] = 0.0f;
  for (long c0 = 0; c0 < r0 + rows; c0 += kBc) {
    const long cols = min_long(kBc, S - c0);
    __syncthreads();
    load_tile(k + base, rs, c0, cols, kBc, D, t.sK, D + 1);
    load_tile(v + base, rs, c0, cols, kBc, D, t.sV, D + 1);
    __syncthreads();
    probabilities_and_ds(t, r0, rows, c0, cols, D, scale);
    __syncthreads();
    MOE_UNROLL
    for (int e = 0; e < kDqAcc; ++e) {
      const int i = tid + e * kThreads;
      if (i < kBrBwd * D) {
        const int r = i / D, d = i % D;
        float a = acc[e];
        for (int j = 0; j < kBc; ++j) a += t.sdS[r * kLdp + j] * t.sK[j * (D + 1) + d];
        acc[e] = a;
      }
    }
  }
  MOE_UNROLL
  for (int e = 0; e < kDqAcc; ++e) {
    const int i = tid + e * kThreads;
    if (i < kBrBwd * D && i / D < rows) dq[base + (r0 + i / D) * rs + i % D] = from_float<T>(acc[e] * scale);
  }
}

void check_shape(const char* op, long batch, long heads, long seq, int head_dim) {
  MOE_CHECK(batch >= 0 && heads >= 1 && seq >= 0 && head_dim >= 1 && head_dim <= kFlashMaxHeadDim, op,
            "bad shape: batch ", batch, ", heads ", heads, ", seq ", seq, ", head_dim ", head_dim,
            " (expected heads >= 1, head_dim in [1, ", kFlashMaxHeadDim, "])");
  MOE_CHECK(batch * heads <= 65535, op, "batch * heads = ", batch * heads, " exceeds the grid's 65535 (grid.y)");
}

}  // namespace

bool flash_async_tiles() {
  static const bool measured_faster = device_sm() >= 90;
  return env_switch("MOE_FLASH_ASYNC", "cp.async tiles", measured_faster);
}

template <class T>
void flash_attention_forward(const T* q, const T* k, const T* v, T* out, float* lse, long batch, long heads, long seq,
                             int head_dim, AttentionLayout layout, cudaStream_t stream) {
  check_shape("cuda::flash_attention_forward", batch, heads, seq, head_dim);
  if (batch == 0 || seq == 0) return;
  const int D = head_dim;
  if constexpr (std::is_same_v<T, bf16>) {  // tensor cores for bf16 storage
    attention_detail::flash_forward_tensor_cores(q, k, v, out, lse, batch * heads, seq, D,
                                                 strides_of(layout, heads, seq, D), flash_async_tiles(), stream);
  } else {
    const size_t shared = sizeof(float) * size_t(kBrFwd * D + kBc * (D + 1) + kBc * D + kBrFwd * kLdp + 3 * kBrFwd);
    const float scale = float(1.0 / std::sqrt(double(D)));
    MOE_LAUNCH(flash_forward_kernel<device_t<T>>, dim3(ceil_div(seq, kBrFwd), unsigned(batch * heads)), kThreads,
               shared, stream, dev(q), dev(k), dev(v), dev(out), lse, strides_of(layout, heads, seq, D), seq, D, scale);
  }
}

template <class T>
void flash_attention_backward(const T* q, const T* k, const T* v, const T* out, const float* lse, const T* dout, T* dq,
                              T* dk, T* dv, long batch, long heads, long seq, int head_dim, AttentionLayout layout,
                              cudaStream_t stream) {
  check_shape("cuda::flash_attention_backward", batch, heads, seq, head_dim);
  if (batch == 0 || seq == 0) return;
  const int D = head_dim;
  const long rows = batch * heads * seq;
  const HeadStrides hs = strides_of(layout, heads, seq, D);
  Workspace<float> delta{size_t(rows)};
  MOE_LAUNCH(flash_delta_kernel<device_t<T>>, ceil_div(rows, kThreads / 32), kThreads, 0, stream, dev(out), dev(dout),
             delta.get(), hs, rows, seq, D);
  const float* dl = delta.get();
  if constexpr (std::is_same_v<T, bf16>) {  // tensor cores for bf16 storage
    attention_detail::flash_backward_tensor_cores(q, k, v, dout, lse, dl, dq, dk, dv, batch * heads, seq, D, hs,
                                                  flash_async_tiles(), stream);
  } else {
    const size_t shared = sizeof(float) * bwd_shared_floats(D);
    const unsigned bh = unsigned(batch * heads);
    const float scale = float(1.0 / std::sqrt(double(D)));
    MOE_LAUNCH(flash_dkdv_kernel<device_t<T>>, dim3(ceil_div(seq, kBc), bh), kThreads, shared, stream, dev(q), dev(k),
               dev(v), dev(dout), lse, dl, dev(dk), dev(dv), hs, seq, D, scale);
    MOE_LAUNCH(flash_dq_kernel<device_t<T>>, dim3(ceil_div(seq, kBrBwd), bh), kThreads, shared, stream, dev(q), dev(k),
               dev(v), dev(dout), lse, dl, dev(dq), hs, seq, D, scale);
  }
}

#define MOE_INSTANTIATE(T)                                                                                          \
  template void flash_attention_forward<T>(const T*, const T*, const T*, T*, float*, long, long, long, int,         \
                                           AttentionLayout, cudaStream_t);                                          \
  template void flash_attention_backward<T>(const T*, const T*, const T*, const T*, const float*, const T*, T*, T*, \
                                            T*, long, long, long, int, AttentionLayout, cudaStream_t);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(bf16)
#undef MOE_INSTANTIATE

}  // namespace moe::cuda
