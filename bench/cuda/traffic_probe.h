// A memory roofline for kernels that read some bytes and write others at once (the grouped GEMM's
// tn form reads its bf16 inputs once and writes E x M x K fp32): a streaming kernel with the same
// read : write mix and no arithmetic to speak of. On an H100 a mix of reads and writes streams
// slower than writes alone (cudaMemsetAsync), so a write-only roofline flatters what is possible.
#pragma once
#include <cstddef>

#include <cuda_runtime_api.h>

namespace moe::bench {

// Reads in_bytes from `in` and writes out_bytes to `out` (both positive multiples of 16, 16-byte
// aligned) in one kernel, the reads and the writes side by side in that proportion, each byte
// moved to or from memory once.
void mixed_traffic(const void* in, size_t in_bytes, void* out, size_t out_bytes, cudaStream_t stream = nullptr);

}  // namespace moe::bench
