// The data- and expert-parallel layout of a run: world = DP x EP from the recipe's [parallel],
// and the sub-communicators of each kind of group.
#pragma once
#include <cstdint>
#include <memory>

#include "parallel/communicator.h"

namespace moe {

// Rank r sits at ep_rank = r % ep inside EP group r / ep (consecutive ranks share experts'
// all-to-all traffic), and at dp_rank = r / ep of the DP group of ranks with the same ep_rank
// (those holding the same experts). Each EP group holds all E experts, E / ep per rank.
struct ParallelLayout {
  int world = 1, dp = 1, ep = 1;
  int rank = 0, dp_rank = 0, ep_rank = 0;
  int64_t experts_per_rank = 0;  // E / ep (0 for a dense model)
};

// Checks and derives the layout; errors name parallel.ep (ep must divide the world size and,
// for an MoE model, moe.num_experts).
ParallelLayout make_layout(int world, int rank, int64_t ep, int64_t num_experts, bool use_moe);

struct ProcessGroups {
  ParallelLayout layout;
  std::shared_ptr<Communicator> world;
  std::shared_ptr<Communicator> dp;  // ranks with the same ep_rank (same experts)
  std::shared_ptr<Communicator> ep;  // the ep ranks of one EP group
};

// Splits `world` (a collective over it).
ProcessGroups make_process_groups(std::shared_ptr<Communicator> world, int64_t ep, int64_t num_experts, bool use_moe);

}  // namespace moe
