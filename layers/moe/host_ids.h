// Reading assignment ids (token or expert indices, i32 or i64) on the host without a converted
// copy: the routing returns i32 ids (the device's, and most strategies'), the host code that plans
// the dispatch walks them once per forward, and converting to i64 vectors first cost as much as
// the walk (bench/dispatch_bench.cpp).
#pragma once
#include <cstdint>

#include "core/error.h"
#include "core/tensor.h"

namespace moe {

// f(const I* ids) with I = int32_t or int64_t: ids points at the numel() elements of the 1-d
// tensor `ids` when it is a contiguous host tensor of that dtype, else at a contiguous host
// copy (converted to i64 when the dtype is another one) that lives until f returns.
template <class F>
decltype(auto) with_host_ids(const Tensor& ids, const char* op, F&& f) {
  MOE_CHECK(ids.dim() == 1, op, "expected 1-d ids, got ", ids.shape_str());
  Tensor h = ids.device() == Device::cpu ? ids.contiguous() : ids.to(Device::cpu).contiguous();
  if (h.dtype() == DType::i32) return f(static_cast<const int32_t*>(h.data<int32_t>()));
  if (h.dtype() != DType::i64) h = h.to(DType::i64);
  return f(static_cast<const int64_t*>(h.data<int64_t>()));
}

}  // namespace moe
