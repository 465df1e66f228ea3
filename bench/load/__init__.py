"""The load benchmark: `cli` starts an aggregator, simulated honest silos (`simsilos`) and one
hostile member (`hostile`) through `run`, and reports honest latency, rounds, losses, memory
and descriptors while the attacks go on."""
