// MoeLayer's constructor from the recipe's strategy name, kept apart from moe_layer.cpp so
// code that injects its own Balancer links without the strategy registry (make_balancer).
#include "layers/moe/moe_layer.h"

namespace moe {

MoeLayer::MoeLayer(const ModelConfig& cfg, int layer_index, Philox& init_rng, DType dtype,
                   std::shared_ptr<Communicator> ep_group)
    : MoeLayer(cfg, layer_index, init_rng, (validate_moe_config(cfg), make_balancer(cfg.moe)), dtype,
               std::move(ep_group)) {}

}  // namespace moe
