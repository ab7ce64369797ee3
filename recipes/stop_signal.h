// SIGINT / SIGTERM handling for training: the first signal asks the loop to checkpoint and exit
// cleanly at the end of the current step; a second one exits at once.
#pragma once

namespace moe {

void install_stop_handlers();
bool stop_requested();
int stop_signal_number();  // the signal received, 0 if none
void reset_stop_request();  // for tests

}  // namespace moe
