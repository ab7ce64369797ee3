# CUDA: real targets when nvcc is there; the emulation build (same .cu sources, host compiler,
# MOE_CUDA_EMULATION) always, so every kernel is tested on machines without a GPU.
file(GLOB MOE_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/core/cuda/*.cu ${CMAKE_SOURCE_DIR}/layers/moe/*.cu)
# Host-side .cpp of the real build (device detection, ...); emulation.cpp is the emulation's own.
file(GLOB MOE_CUDA_HOST_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/core/cuda/*.cpp)
list(FILTER MOE_CUDA_HOST_SOURCES EXCLUDE REGEX "/emulation\\.cpp$")
# The Tensor-level backend over the kernels (core/cuda/ops: host code): into both builds.
file(GLOB MOE_CUDA_OPS_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/core/cuda/ops/*.cpp)
file(GLOB MOE_CUDA_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/cuda/*_test.cpp)
# *_gpu_test.cpp test what the emulation does not emulate (cuBLAS): the GPU test binary only.
set(MOE_CUDA_EMU_TEST_SOURCES ${MOE_CUDA_TEST_SOURCES})
list(FILTER MOE_CUDA_EMU_TEST_SOURCES EXCLUDE REGEX "_gpu_test\\.cpp$")

set(MOE_HAVE_CUDA OFF)
if(NOT MOE_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(MOE_HAVE_CUDA ON)
  elseif(MOE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "MOE_CUDA=ON but no CUDA compiler was found (looked in PATH and /usr/local/cuda/bin)")
  endif()
endif()

include(GoogleTest)
enable_testing()

if(MOE_HAVE_CUDA AND MOE_CUDA_SOURCES)
  # sm_90a, not sm_90: wgmma (core/cuda/wgmma.h) exists only in the architecture-specific target;
  # its code runs on sm_90 devices (H100 / H200) only, sm_80 code everywhere else.
  set(CMAKE_CUDA_ARCHITECTURES 80 90a)
  enable_language(CUDA)
  # CMake 3.25 does not know nvcc 13's C++20 flag; tell it, so CUDA_STANDARD 20 works.
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_EXTENSIONS OFF)
  find_package(CUDAToolkit REQUIRED)
  add_library(moetrain_cuda STATIC ${MOE_CUDA_SOURCES} ${MOE_CUDA_HOST_SOURCES} ${MOE_CUDA_OPS_SOURCES})
  # The directory's flags (-Wall, -march=native, ...) are host-compiler flags: keep them off nvcc.
  get_property(moe_dir_options DIRECTORY ${CMAKE_SOURCE_DIR} PROPERTY COMPILE_OPTIONS)
  set(moe_cuda_options "")
  foreach(opt ${moe_dir_options})
    list(APPEND moe_cuda_options "$<$<COMPILE_LANGUAGE:CXX>:${opt}>")
  endforeach()
  list(APPEND moe_cuda_options "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>")
  set_property(TARGET moetrain_cuda PROPERTY COMPILE_OPTIONS ${moe_cuda_options})
  target_include_directories(moetrain_cuda PUBLIC ${CMAKE_SOURCE_DIR})
  target_link_libraries(moetrain_cuda PUBLIC moetrain_lib CUDA::cudart CUDA::cublas)
  message(STATUS "moetrain: CUDA backend ON (${CMAKE_CUDA_COMPILER}, sm_80 sm_90a)")

  # The kernel tests against the real build: one ctest entry, label gpu (ctest -L gpu); it
  # reports "skipped" (exit 77) on a machine without a usable GPU.
  set(moe_gpu_test_sources ${MOE_CUDA_TEST_SOURCES})
  list(FILTER moe_gpu_test_sources EXCLUDE REGEX "/emulation(_[a-z]+)?_test\\.cpp$")
  if(moe_gpu_test_sources)
    add_executable(moetrain_cuda_gpu_tests ${moe_gpu_test_sources} ${CMAKE_SOURCE_DIR}/tests/cuda/gpu_main.cpp)
    set_target_properties(moetrain_cuda_gpu_tests PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
    target_link_libraries(moetrain_cuda_gpu_tests PRIVATE moetrain_cuda moetrain_lib GTest::gtest)
    target_compile_definitions(moetrain_cuda_gpu_tests PRIVATE MOE_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
      MOE_BINARY_DIR="${CMAKE_BINARY_DIR}")
    add_test(NAME cuda_kernels_gpu COMMAND moetrain_cuda_gpu_tests)
    set_tests_properties(cuda_kernels_gpu PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 600)
    # Device detection on any machine: either a GPU is described or one "no CUDA device: ..." line.
    add_test(NAME cuda_device_detection COMMAND moetrain_cuda_gpu_tests --gtest_list_tests)
    set_tests_properties(cuda_device_detection PROPERTIES TIMEOUT 60
      PASS_REGULAR_EXPRESSION "no CUDA device: [^\n]+; skipping|GPU kernel tests on .+ \\(sm_[0-9]+")
  endif()

  # GPU benchmarks (Google Benchmark, cudaEvent timing): build/bench/moetrain_cuda_bench, run by
  # scripts/bench_gpu.sh; exits 77 with one line without a device. Not a ctest entry.
  # (*.cu: the benchmarks' own probe kernels, with the library's split of host and nvcc flags.)
  file(GLOB moe_cuda_bench_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/bench/cuda/*.cpp
       ${CMAKE_SOURCE_DIR}/bench/cuda/*.cu)
  if(moe_cuda_bench_sources)
    add_executable(moetrain_cuda_bench ${moe_cuda_bench_sources})
    set_target_properties(moetrain_cuda_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
    set_property(TARGET moetrain_cuda_bench PROPERTY COMPILE_OPTIONS ${moe_cuda_options})
    target_link_libraries(moetrain_cuda_bench PRIVATE moetrain_cuda moetrain_lib benchmark::benchmark)
  endif()
else()
  message(STATUS "moetrain: CUDA backend OFF (no toolkit or no kernels yet)")
endif()

if(MOE_CUDA_SOURCES)
  add_library(moetrain_cuda_emu STATIC ${CMAKE_SOURCE_DIR}/core/cuda/emulation.cpp ${MOE_CUDA_OPS_SOURCES})
  foreach(src ${MOE_CUDA_SOURCES})
    get_filename_component(name ${src} NAME_WE)
    set(wrapper ${CMAKE_BINARY_DIR}/cuda_emu/${name}_emu.cpp)
    file(GENERATE OUTPUT ${wrapper} CONTENT "#include \"${src}\"\n")
    target_sources(moetrain_cuda_emu PRIVATE ${wrapper})
  endforeach()
  target_compile_definitions(moetrain_cuda_emu PUBLIC MOE_CUDA_EMULATION=1)
  target_include_directories(moetrain_cuda_emu PUBLIC ${CMAKE_SOURCE_DIR})
  target_link_libraries(moetrain_cuda_emu PUBLIC moetrain_lib Threads::Threads)

  # The emulation runtime's own costs against the thread-per-launch scheme it replaced:
  # build/bench/moetrain_emulation_bench (docs/benchmarks.md). Not a ctest entry.
  add_executable(moetrain_emulation_bench ${CMAKE_SOURCE_DIR}/bench/emulation/emulation_bench.cpp)
  set_target_properties(moetrain_emulation_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
  target_link_libraries(moetrain_emulation_bench PRIVATE moetrain_cuda_emu benchmark::benchmark)

  # Every kernel test, run under the emulation (no GPU needed): one ctest entry per TEST.
  if(MOE_CUDA_EMU_TEST_SOURCES)
    add_executable(moetrain_cuda_emu_tests ${MOE_CUDA_EMU_TEST_SOURCES})
    set_target_properties(moetrain_cuda_emu_tests PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
    target_link_libraries(moetrain_cuda_emu_tests PRIVATE moetrain_cuda_emu moetrain_lib GTest::gtest GTest::gtest_main)
    target_compile_definitions(moetrain_cuda_emu_tests PRIVATE MOE_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
      MOE_BINARY_DIR="${CMAKE_BINARY_DIR}")
    gtest_discover_tests(moetrain_cuda_emu_tests DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600 LABELS cuda_emu)
  endif()

  # Data parallelism on the device under mpirun, kernels emulated (tests/cuda/mpi; main() of the
  # MPI tests: every rank runs GoogleTest, one exit code for the job).
  file(GLOB moe_mpi_cuda_test_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/cuda/mpi/*_test.cpp)
  if(moe_mpi_cuda_test_sources AND MPIEXEC_EXECUTABLE)
    add_executable(moetrain_mpi_cuda_emu_tests ${moe_mpi_cuda_test_sources} ${CMAKE_SOURCE_DIR}/tests/mpi/mpi_main.cpp)
    set_target_properties(moetrain_mpi_cuda_emu_tests PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
    target_link_libraries(moetrain_mpi_cuda_emu_tests PRIVATE moetrain_cuda_emu moetrain_lib GTest::gtest)
    target_compile_definitions(moetrain_mpi_cuda_emu_tests PRIVATE MOE_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
      MOE_BINARY_DIR="${CMAKE_BINARY_DIR}")
    add_test(NAME mpi_cuda_emu_np2 COMMAND ${MPIEXEC_EXECUTABLE} --oversubscribe ${MPIEXEC_NUMPROC_FLAG} 2
             $<TARGET_FILE:moetrain_mpi_cuda_emu_tests>)
    set_tests_properties(mpi_cuda_emu_np2 PROPERTIES TIMEOUT 900 LABELS "mpi;cuda_emu" RESOURCE_LOCK mpi_ranks
      ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1")
  endif()
endif()
include(${CMAKE_SOURCE_DIR}/cmake/nccl.cmake)
include(${CMAKE_SOURCE_DIR}/cmake/cuda_audit.cmake)
