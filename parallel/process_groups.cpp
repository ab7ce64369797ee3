// world = DP x EP: layout checks with errors naming parallel.ep, and the group communicators.
// See process_groups.h for the rank placement.
#include "parallel/process_groups.h"

#include "core/error.h"

namespace moe {

ParallelLayout make_layout(int world, int rank, int64_t ep, int64_t num_experts, bool use_moe) {
  MOE_CHECK(world >= 1 && rank >= 0 && rank < world, "make_layout", "rank ", rank, " outside a world of ", world);
  MOE_CHECK(ep >= 1, "parallel.ep", "must be >= 1, got ", ep);
  MOE_CHECK(world % ep == 0, "parallel.ep", "value ", ep, " does not divide the world size ", world,
            " (world = dp x ep; start a multiple of ", ep, " ranks)");
  if (use_moe) {
    MOE_CHECK(num_experts % ep == 0, "parallel.ep", "value ", ep, " does not divide moe.num_experts = ", num_experts,
              " (each rank of an EP group holds num_experts / ep experts)");
  } else {
    MOE_CHECK(ep == 1, "parallel.ep", "value ", ep, " needs an MoE model (moe.enabled = true)");
  }
  ParallelLayout l;
  l.world = world;
  l.ep = int(ep);
  l.dp = world / int(ep);
  l.rank = rank;
  l.ep_rank = rank % int(ep);
  l.dp_rank = rank / int(ep);
  l.experts_per_rank = use_moe ? num_experts / ep : 0;
  return l;
}

ProcessGroups make_process_groups(std::shared_ptr<Communicator> world, int64_t ep, int64_t num_experts, bool use_moe) {
  ProcessGroups g;
  g.layout = make_layout(world->size(), world->rank(), ep, num_experts, use_moe);
  g.world = world;
  g.dp = world->split(g.layout.ep_rank, g.layout.dp_rank);
  g.ep = world->split(g.layout.dp_rank, g.layout.ep_rank);
  return g;
}

}  // namespace moe
