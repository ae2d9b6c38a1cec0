"""Option parsers and error handling shared by the `pbs-tune` commands."""
import functools

import click

from ..profile import profiles
from ..profile.params import ESTIMATORS
from ..seqlen import parse_length


def one_line_errors(fn):
    """Expected failures print one line ('Error: ...') and exit 1, without a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, RuntimeError, OSError, profiles.ProfileError) as exc:
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return wrapper


def parse_max_error(ctx, param, value):
    """A number in (0, 1], or None for 'default' (resolved on the calibration data)."""
    if value.strip().lower() == "default":
        return None
    try:
        bound = float(value)
    except ValueError:
        bound = -1.0
    if not 0.0 < bound <= 1.0:
        raise click.BadParameter(f"expected a number in (0, 1] or 'default', got {value!r}")
    return bound


def parse_estimators(ctx, param, value):
    """A comma-separated subset of the block estimators, as a tuple."""
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown or not names:
        raise click.BadParameter(f"expected some of {','.join(ESTIMATORS)} (comma-separated), got {value!r}")
    return names


ESTIMATORS_HELP = ("Block estimators a layer's plan may use, each with and without the permutation: 'mean' "
                   "(the paper's), 'lse' (each block's mean query against every key); comma-separated.")


def parse_lengths(ctx, param, values):
    """Lengths such as 32k or 131072, sorted, each once."""
    try:
        return sorted({parse_length(v) for v in values})
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
