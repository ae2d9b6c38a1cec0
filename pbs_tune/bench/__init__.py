"""GPU benchmarks as importable code (`python -m pbs_tune.bench.<name> --help`); `bash scripts/bench_gpu.sh
STEP` runs them with the arguments benchmarks/README.md's tables were made with."""
