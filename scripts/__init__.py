"""Small named steps of the self-training loop, the demo and the benchmarks."""
