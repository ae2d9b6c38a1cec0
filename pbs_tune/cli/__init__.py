"""`pbs-tune`: tune PBS-Attn for this GPU, inspect profiles, build their kernel libraries.

The commands live in tuning.py (sweep, plan, capture) and profile_commands.py (show, compile,
verify, relaunch, report); this module is the group the console script runs."""
import click

from .profile_commands import compile_cmd, relaunch, report, show, verify
from .tuning import capture, plan, sweep


@click.group(context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(package_name="pbs-tune")
def main():
    """Ahead-of-time tuning of Permuted Block-Sparse Attention for your GPU."""


for _command in (sweep, show, compile_cmd, verify, relaunch, report, plan, capture):
    main.add_command(_command)
