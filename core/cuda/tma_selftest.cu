// The kernels of tma_selftest.h. The pipeline is the canonical warp-specialized mainloop: warpgroup
// 0 gives its registers back (setmaxnreg.dec) and one elected lane of its first warp produces:
// per 64-deep slice it waits for the stage's empty barrier, arms the full barrier with the stage's
// bytes (arrive.expect_tx) and issues the two TMA loads; warpgroups 1 and 2 take registers
// (setmaxnreg.inc) and consume: wait for the full barrier, 4 wgmma m64n128k16 over the stage (A
// rows 64 w .., B all 128 columns, K-major 128B swizzle as TMA wrote it), wait for them, then
// every consumer thread arrives on the empty barrier (256 arrivals release a stage). The store
// kernel is the other direction: a staged box written to global memory by one bulk tensor store.
#include "core/cuda/tma_selftest.h"

#include "core/cuda/launch.h"
#include "core/cuda/tma.h"
#include "core/cuda/wgmma.h"
#include "core/error.h"

#ifdef MOE_CUDA_EMULATION
#include <chrono>
#include <thread>
#else
#include <cuda_runtime_api.h>
#endif

namespace moe::cuda {
namespace {

constexpr int kStages = 3;
constexpr int kTileBytes = 128 * 128;  // [128 rows][64 bf16]
constexpr int kStageBytes = 2 * kTileBytes;
constexpr int kConsumerThreads = 256;

// The first 1024-byte aligned byte of the dynamic shared memory (the 128B swizzle's atom); the
// launch adds 1024 bytes of slack. smem_address is the shared-window address on the GPU, the
// offset into the dynamic shared memory under the emulation: aligned either way.
__device__ __forceinline__ unsigned char* align_1024(unsigned char* p) {
  return p + (1024 - wgmma::smem_address(p) % 1024) % 1024;
}

__global__ void __launch_bounds__(128, 1)
    tma_load_box_kernel(const __grid_constant__ TensorMap map, int rank, int c0, int c1, int c2, uint32_t elements,
                        uint16_t* out) {
  MOE_DYNAMIC_SHARED(unsigned char, raw);
  MOE_SHARED(uint64_t, bar, [1]);
  unsigned char* smem = align_1024(raw);
  if (threadIdx.x == 0) {
    tma::prefetch_tensor_map(&map);
    tma::mbar_init(&bar[0], 1);
    tma::fence_barrier_init();
  }
  __syncthreads();
  if (threadIdx.x < 32 && tma::elect_one()) {
    tma::mbar_arrive_expect_tx(&bar[0], elements * 2);
    if (rank == 2)
      tma::load_2d(smem, &map, &bar[0], c0, c1);
    else
      tma::load_3d(smem, &map, &bar[0], c0, c1, c2);
  }
  tma::mbar_wait(&bar[0], 0);
  const auto* landed = reinterpret_cast<const uint16_t*>(smem);
  for (uint32_t i = threadIdx.x; i < elements; i += blockDim.x) out[i] = landed[i];
}

// The staging written by every thread with generic stores, handed to the async proxy (each writer
// fences, then the barrier), one bulk store, and its thread waits for the writes before exiting.
__global__ void __launch_bounds__(128, 1)
    tma_store_box_kernel(const __grid_constant__ TensorMap map, int c0, int c1, const uint32_t* image,
                         uint32_t words) {
  MOE_DYNAMIC_SHARED(unsigned char, raw);
  auto* smem = reinterpret_cast<uint32_t*>(align_1024(raw));
  for (uint32_t i = threadIdx.x; i < words; i += blockDim.x) smem[i] = image[i];
  tma::fence_proxy_async_shared();
  __syncthreads();
  if (threadIdx.x == 0) {
    tma::store_2d(&map, smem, c0, c1);
    tma::bulk_commit_group();
    tma::bulk_wait_group<0>();
  }
}

__global__ void __launch_bounds__(384, 1)
    tma_pipeline_kernel(const __grid_constant__ TensorMap map_a, const __grid_constant__ TensorMap map_b, int m,
                        int n, int k, int plant, float* c) {
  MOE_DYNAMIC_SHARED(unsigned char, raw);
  MOE_SHARED(uint64_t, full, [kStages]);
  MOE_SHARED(uint64_t, empty, [kStages]);
  unsigned char* smem = align_1024(raw);
  const int tid = int(threadIdx.x), wg = tid / 128, slices = (k + 63) / 64;
  if (tid == 0) {
    tma::prefetch_tensor_map(&map_a);
    tma::prefetch_tensor_map(&map_b);
    for (int s = 0; s < kStages; ++s) {
      tma::mbar_init(&full[s], 1);
      tma::mbar_init(&empty[s], kConsumerThreads);
    }
    tma::fence_barrier_init();
  }
  __syncthreads();

  if (wg == 0) {  // the producer warpgroup: one lane issues, the rest exit
    tma::setmaxnreg_dec<40>();
    if (tid < 32 && tma::elect_one())
      for (int it = 0; it < slices; ++it) {
        const int s = it % kStages;
        const unsigned round = unsigned(it / kStages);
        // A fresh barrier's "previous" phase (parity 1) counts as complete: round 0 passes at once.
        if (plant != int(TmaPlant::producer_skips_empty_wait)) tma::mbar_wait(&empty[s], (round & 1) ^ 1);
        tma::mbar_arrive_expect_tx(&full[s], kStageBytes + (plant == int(TmaPlant::wrong_expect_tx) ? 16 : 0));
        tma::load_2d(smem + s * kStageBytes, &map_a, &full[s], it * 64, 0);
        tma::load_2d(smem + s * kStageBytes + kTileBytes, &map_b, &full[s], it * 64, 0);
      }
    return;
  }

  tma::setmaxnreg_inc<232>();
  const int t = tid % 128, row0 = (wg - 1) * 64;
  float d[64];
  MOE_UNROLL
  for (int i = 0; i < 64; ++i) d[i] = 0.0f;
  for (int it = 0; it < slices; ++it) {
    const int s = it % kStages;
    const unsigned round = unsigned(it / kStages);
    if (plant != int(TmaPlant::consumer_skips_full_wait)) tma::mbar_wait(&full[s], round & 1);
    unsigned char* stage = smem + s * kStageBytes;
    const uint32_t sa = wgmma::smem_address(stage + row0 * 128), sb = wgmma::smem_address(stage + kTileBytes);
    wgmma::fence_operand(d);
    wgmma::fence();
    MOE_UNROLL
    for (int ks = 0; ks < 4; ++ks)
      wgmma::mma_async<128>(d, wgmma::make_desc(sa + 32 * ks, 16, 1024, wgmma::Swizzle::b128),
                            wgmma::make_desc(sb + 32 * ks, 16, 1024, wgmma::Swizzle::b128), true);
    wgmma::commit_group();
#ifdef MOE_CUDA_EMULATION
    // The planted refill must meet the products in flight: hold them long enough that the
    // producer, which no longer waits, certainly gets there first.
    if (plant == int(TmaPlant::producer_skips_empty_wait)) std::this_thread::sleep_for(std::chrono::milliseconds(100));
#endif
    wgmma::wait_group<0>();
    wgmma::fence_operand(d);
    tma::mbar_arrive(&empty[s]);
  }
  tma::named_barrier_sync(1, kConsumerThreads);  // the consumers alone (the producer warps have left)
  MOE_UNROLL
  for (int i = 0; i < 64; ++i) {
    const int r = row0 + wgmma::acc_row(t, i), col = wgmma::acc_col(t, i);
    if (r < m && col < n) c[size_t(r) * size_t(n) + size_t(col)] = d[i];
  }
}

}  // namespace

bool tma_available(std::string& why) {
#ifdef MOE_CUDA_EMULATION
  (void)why;
  return true;
#else
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    why = "no CUDA device";
    return false;
  }
  if (major == 9 && minor == 0) return true;
  why = "TMA / wgmma kernels are sm_90a code: the device is sm_" + std::to_string(10 * major + minor);
  return false;
#endif
}

void tma_load_box(const TensorMap& map, int rank, const int* coords, uint32_t box_elements, uint16_t* out,
                  cudaStream_t stream) {
  MOE_CHECK(rank == 2 || rank == 3, "cuda::tma_load_box", "rank ", rank, ", expected 2 or 3");
  const size_t bytes = size_t(box_elements) * 2 + 1024;
  allow_dynamic_shared("cuda::tma_load_box", tma_load_box_kernel, bytes);
  MOE_LAUNCH(tma_load_box_kernel, dim3(1), dim3(128), bytes, stream, map, rank, coords[0], coords[1],
             rank == 3 ? coords[2] : 0, box_elements, out);
}

void tma_store_box(const TensorMap& map, const int* coords, const uint32_t* image, uint32_t box_bytes,
                   cudaStream_t stream) {
  MOE_CHECK(box_bytes % 16 == 0, "cuda::tma_store_box", "box of ", box_bytes, " bytes, expected a multiple of 16");
  const size_t bytes = size_t(box_bytes) + 1024;
  allow_dynamic_shared("cuda::tma_store_box", tma_store_box_kernel, bytes);
  MOE_LAUNCH(tma_store_box_kernel, dim3(1), dim3(128), bytes, stream, map, coords[0], coords[1], image,
             box_bytes / 4);
}

void tma_pipeline_gemm(const bf16* a, const bf16* b, int m, int n, int k, int k_stride, float* c, TmaPlant plant,
                       cudaStream_t stream) {
  const char* op = "cuda::tma_pipeline_gemm";
  MOE_CHECK(m >= 1 && m <= 128 && n >= 1 && n <= 128 && k >= 1 && k_stride >= k, op, "m ", m, ", n ", n, ", k ", k,
            ", k_stride ", k_stride, ": expected 1 <= m, n <= 128 and k <= k_stride");
  const uint32_t box[2] = {64, 128};
  const uint64_t dims_a[2] = {uint64_t(k), uint64_t(m)}, dims_b[2] = {uint64_t(k), uint64_t(n)};
  const uint64_t stride[1] = {uint64_t(k_stride) * 2};
  const TensorMap map_a = make_tensor_map_bf16(a, 2, dims_a, stride, box, op);
  const TensorMap map_b = make_tensor_map_bf16(b, 2, dims_b, stride, box, op);
  const size_t bytes = size_t(kStages) * kStageBytes + 1024;
  allow_dynamic_shared(op, tma_pipeline_kernel, bytes);
  MOE_LAUNCH(tma_pipeline_kernel, dim3(1), dim3(384), bytes, stream, map_a, map_b, m, n, k, int(plant), c);
}

}  // namespace moe::cuda
