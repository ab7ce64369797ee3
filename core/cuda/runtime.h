// The host-visible CUDA types (cudaStream_t, dim3): the CUDA runtime API on the GPU build, the
// emulation runtime under MOE_CUDA_EMULATION. Host wrappers of kernels include only this.
#pragma once
#ifdef MOE_CUDA_EMULATION
#include "core/cuda/emulation.h"
#else
#include <cuda_runtime_api.h>
#endif
