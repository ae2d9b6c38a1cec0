"""Measuring attention, shared by the tuner and the benchmarks: synthetic workloads, accuracy metrics, timing."""
