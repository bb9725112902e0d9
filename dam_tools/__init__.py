"""Tools that are not steps of the loop: the local demo and its stack, the synthetic exports, the tiny model builder,
the focal-prompt ablation, the loop acceptance demo and the benchmarks (dam_tools.bench). Nothing in dam_model,
backend or dam_loop imports this package; scripts/ and the tests do."""
import os

# Before torch loads OpenMP: on a busy 2-core machine spin-waiting threads slow every op down ~20x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
