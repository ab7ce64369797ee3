// Shared selection helpers of the balancing strategies: deterministic row-wise top-k on raw
// arrays, and turning a list of (token, expert) choices into a Routing with differentiable gates.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "layers/moe/balance/balancer.h"

namespace moe {

// Chosen (token, expert) pairs and the value each was chosen by, in output order.
struct Selection {
  std::vector<int64_t> token, expert;
  std::vector<double> score;
  void reserve(size_t n) {
    token.reserve(n);
    expert.reserve(n);
    score.reserve(n);
  }
  void push(int64_t t, int64_t e, double s) {
    token.push_back(t);
    expert.push_back(e);
    score.push_back(s);
  }
  size_t size() const { return token.size(); }
};

// Indices of the k largest entries of each row of v [rows, cols] (row-major), written to
// idx[rows * k] sorted by value descending; equal values go to the lower index.
template <class T>
void topk_rows(const T* v, int64_t rows, int64_t cols, int64_t k, int64_t* idx);

// The n-th largest (1-based) of v[0..len) by partial selection; v is reordered.
double nth_largest(double* v, int64_t len, int64_t n);

// Token-major top-k selection of a [T, C] float tensor (no grad needed): token 0's k choices in
// rank order, then token 1's, ... Throws naming `where` when a value is NaN.
Selection select_topk(const Tensor& values, int64_t k, const char* where);

// values - sign * bias broadcast over rows, computed without recording (selection only).
Tensor shifted_scores(const Tensor& scores, const std::vector<float>& bias, double sign);

// How gates are built from a [T, C] differentiable source.
struct GateOptions {
  bool renormalize = false;  // gates of each token re-scaled to sum 1 over its assignments
  double scale = 1.0;        // multiplies the (renormalized) gates
};

// Routing of the selection: gate = gate_source[token, expert] picked with index_select on the
// flattened source (so autograd reaches the router), renormalized per token when asked
// (a per-token sum through a constant 0/1 mask handles any number of choices per token).
// A gate_source on the cuda device (fp32; a device-routed strategy) gives the gate there: the
// selection, which must then be token-major, goes up as -1-padded [T, K] ids (K = the most
// choices of a token), router_gates renormalizes and scales, and gather picks the A real gates.
Routing build_routing(const Tensor& gate_source, const Selection& sel, const GateOptions& opt);

// Checks the router output handed to a strategy: scores and logits [T, cols], floating, T >= 1.
void check_router_output(const RouterOutput& in, int64_t cols, const char* where);

// Loads per expert (assignment counts) of a routing, over `num_experts` experts.
std::vector<double> routing_loads(const Routing& r, int64_t num_experts);

}  // namespace moe
