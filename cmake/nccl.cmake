# The NCCL backend of Communicator (parallel/nccl_communicator.cpp) and its GPU test under mpirun.
# Included at the end of cmake/cuda.cmake; builds only when the CUDA toolkit and NCCL are found.
if(MOE_HAVE_CUDA)
  find_package(CUDAToolkit)
  find_path(MOE_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  find_library(MOE_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
endif()

if(MOE_HAVE_CUDA AND CUDAToolkit_FOUND AND MOE_NCCL_INCLUDE_DIR AND MOE_NCCL_LIBRARY)
  # A host-compiled library (no kernels). In moetrain_lib the same source is an empty unit: only
  # this target defines MOE_HAVE_NCCL, for itself and for what links it.
  add_library(moetrain_nccl STATIC ${CMAKE_SOURCE_DIR}/parallel/nccl_communicator.cpp)
  target_compile_definitions(moetrain_nccl PUBLIC MOE_HAVE_NCCL=1)
  target_include_directories(moetrain_nccl PUBLIC ${CMAKE_SOURCE_DIR} ${MOE_NCCL_INCLUDE_DIR})
  target_link_libraries(moetrain_nccl PUBLIC moetrain_lib CUDA::cudart ${MOE_NCCL_LIBRARY})
  message(STATUS "moetrain: NCCL backend ON (${MOE_NCCL_LIBRARY})")

  # Every collective against hand-computed values on 2 ranks (label gpu; exit 77 = skipped
  # without one CUDA device per rank) and on 1 rank (runs on a one-GPU machine).
  add_executable(moetrain_nccl_gpu_tests ${CMAKE_SOURCE_DIR}/tests/nccl/nccl_communicator_gpu_test.cpp)
  set_target_properties(moetrain_nccl_gpu_tests PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  target_link_libraries(moetrain_nccl_gpu_tests PRIVATE moetrain_nccl moetrain_lib GTest::gtest)
  foreach(np 1 2)
    add_test(NAME nccl_np${np} COMMAND ${MPIEXEC_EXECUTABLE} --oversubscribe ${MPIEXEC_NUMPROC_FLAG} ${np}
             $<TARGET_FILE:moetrain_nccl_gpu_tests>)
    set_tests_properties(nccl_np${np} PROPERTIES LABELS "gpu;mpi" SKIP_RETURN_CODE 77 TIMEOUT 300
      ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1")
  endforeach()
else()
  message(STATUS "moetrain: NCCL backend OFF (needs the CUDA toolkit and nccl.h / libnccl)")
endif()
