"""Progress of long work on stderr (stages, counts, time left), so that a sweep, a capture or a
plan is never silent for minutes; `--quiet` turns it off."""
import sys
import time

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = bool(quiet)


def say(message: str, always: bool = False) -> None:
    """`always`: a problem the user must see, even with --quiet."""
    if always or not _quiet:
        print(f"pbs-tune: {message}", file=sys.stderr, flush=True)


class Steps:
    """Say each step of a stage of `total` steps with the time so far and an estimate of what is left."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.done, self.start = what, total, 0, time.perf_counter()

    def step(self, label: str = "") -> None:
        self.done += 1
        spent = time.perf_counter() - self.start
        left = spent / self.done * (self.total - self.done)
        say(f"{self.what} {self.done}/{self.total}{' ' + label if label else ''} "
            f"({spent:.0f} s, about {left:.0f} s left)")
