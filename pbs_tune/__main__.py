"""`python -m pbs_tune` is the `pbs-tune` command."""
from .cli import main

main(prog_name="pbs-tune")
