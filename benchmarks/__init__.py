"""Benchmarks: in-process model throughput, HTTP load against the service and a naive baseline
(`python -m benchmarks.serving`), and a memory soak (`python -m benchmarks.soak`)."""
