"""A sweep worker process: `python -m pbs_tune.tune.worker SPEC.json` runs trials on the
studies of the sweep described by the JSON file (a `SweepSpec`), and writes nothing else.
`run_sweep` starts one per GPU (each seeing only its own) or per CPU core."""
import sys

from .sweep import SweepSpec, run_worker

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        run_worker(SweepSpec.from_json(f.read()))
