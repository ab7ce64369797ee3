// Runs a generic lambda with the C++ type of a floating dtype: f([](auto tag){ using T = decltype(tag); }).
#pragma once
#include "core/dtype.h"
#include "core/error.h"

namespace moe {

template <class F>
decltype(auto) dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    default: MOE_FAIL(op, "expected dtype f32 or f64, got ", dtype_name(dt));
  }
}

template <class F>
decltype(auto) dispatch_index(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::i32: return f(int32_t{});
    case DType::i64: return f(int64_t{});
    default: MOE_FAIL(op, "expected an index dtype i32 or i64, got ", dtype_name(dt));
  }
}

}  // namespace moe
