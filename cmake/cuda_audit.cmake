# GPU-only launch failures checked at build time (no GPU needed): every kernel of the built CUDA
# library against the register file and the 48 KiB static shared-memory limit, for sm_80 and sm_90
# (scripts/check_cuda_resources.py reads the cubins nvcc embeds). `ctest -L build` after building
# moetrain_cuda; `scripts/check_cuda_resources.py build/libmoetrain_cuda.a --list` prints the table.
if(TARGET moetrain_cuda)
  find_program(MOE_SYSTEM_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
  if(MOE_SYSTEM_PYTHON)
    set(moe_check ${CMAKE_SOURCE_DIR}/scripts/check_cuda_resources.py)
    add_test(NAME cuda_resource_usage COMMAND ${MOE_SYSTEM_PYTHON} ${moe_check} $<TARGET_FILE:moetrain_cuda>)
    set_tests_properties(cuda_resource_usage PROPERTIES LABELS build TIMEOUT 120)

    # The check itself must fail on a planted kernel: ~120 registers and no __launch_bounds__ (a
    # 1024-thread launch would fail), next to the same kernel bounded to 1024 threads (passes).
    set(moe_planted ${CMAKE_BINARY_DIR}/cuda_audit/planted_registers.cu)
    file(WRITE ${moe_planted} "
#define MOE_PLANTED_BODY \\
  float acc[96]; \\
  _Pragma(\"unroll\") for (int i = 0; i < 96; ++i) acc[i] = in[threadIdx.x + i * n]; \\
  for (int r = 0; r < n; ++r) \\
    _Pragma(\"unroll\") for (int i = 0; i < 96; ++i) acc[i] = acc[i] * acc[(i + 1) % 96] + in[r]; \\
  float s = 0; \\
  _Pragma(\"unroll\") for (int i = 0; i < 96; ++i) s += acc[i]; \\
  out[threadIdx.x] = s;
__global__ void planted_unbounded_kernel(const float* in, float* out, int n) { MOE_PLANTED_BODY }
__global__ void __launch_bounds__(1024) planted_bounded_kernel(const float* in, float* out, int n) { MOE_PLANTED_BODY }
")
    add_test(NAME cuda_resource_usage_planted
             COMMAND sh -c "'${CMAKE_CUDA_COMPILER}' -c -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 '${moe_planted}' -o planted_registers.o && '${MOE_SYSTEM_PYTHON}' '${moe_check}' planted_registers.o"
             WORKING_DIRECTORY ${CMAKE_BINARY_DIR}/cuda_audit)
    # Pass only if both archs flag the unbounded kernel and nothing flags the bounded one.
    set_tests_properties(cuda_resource_usage_planted PROPERTIES LABELS build TIMEOUT 300
      PASS_REGULAR_EXPRESSION "2 kernels, 4 cubin entries \\(sm_80, sm_90\\): 2 problem\\(s\\)"
      FAIL_REGULAR_EXPRESSION "sm_[0-9]+ planted_bounded_kernel")
  endif()
endif()
