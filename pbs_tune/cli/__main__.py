"""`python -m pbs_tune.cli` is the `pbs-tune` command, as `python -m pbs_tune` is."""
from . import main

main(prog_name="pbs-tune")
