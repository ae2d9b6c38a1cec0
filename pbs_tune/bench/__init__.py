"""GPU benchmarks as importable code; `scripts/bench_*.py` are thin entry points."""
