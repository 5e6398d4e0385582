"""Benchmarks: in-process model throughput, HTTP load against the service and a naive baseline
(`python -m benchmarks.serving`), a memory soak (`python -m benchmarks.soak`), and
the CIFAR-10 recipe's accuracy ceiling on a GPU (`python -m benchmarks.recipe_ceiling`, PyTorch)."""
