"""servesim's GPU profiler: times real attention, linear/norm/activation, LM-head and NCCL kernels."""
