"""GPU benchmark of the run-time loader; see pbs_tune/bench/loader.py. Run on a GPU machine."""
from pbs_tune.bench.loader import main

if __name__ == "__main__":
    main()
