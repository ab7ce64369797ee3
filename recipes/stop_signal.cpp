// Async-signal-safe flag set by the handler and polled by the training loop.
#include "recipes/stop_signal.h"

#include <csignal>
#include <unistd.h>

namespace moe {
namespace {
volatile std::sig_atomic_t g_signal = 0;

void on_signal(int sig) {
  if (g_signal != 0) _exit(128 + sig);  // second signal: the user insists
  g_signal = sig;
}
}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool stop_requested() { return g_signal != 0; }
int stop_signal_number() { return g_signal; }
void reset_stop_request() { g_signal = 0; }

}  // namespace moe
