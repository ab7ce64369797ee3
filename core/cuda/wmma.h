// The warp matrix (tensor core) API for kernels: CUDA's <mma.h> on the GPU, the emulation's
// nvcuda::wmma (core/cuda/emulation_wmma.h) under MOE_CUDA_EMULATION.
#pragma once
#ifdef MOE_CUDA_EMULATION
#include "core/cuda/emulation.h"  // ends with the emulated nvcuda::wmma
#else
#include <mma.h>
#endif
