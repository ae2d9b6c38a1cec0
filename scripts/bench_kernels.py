"""GPU benchmark of the PBS kernels; see pbs_tune/bench/kernels.py. Run on a GPU machine."""
from pbs_tune.bench.kernels import main

if __name__ == "__main__":
    main()
