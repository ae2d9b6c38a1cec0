#!/usr/bin/env bash
# Run the test suite on CPU: Triton kernels execute in the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=1
# The lint first (pyproject.toml [tool.ruff]): a minute of tests is not spent on a file that does not parse.
.venv/bin/ruff check pbs_tune tests scripts
# One worker per core (pytest-xdist; the interpreter runs one Python thread per test), each taking the
# next test when it is free (the sweeps' tests take a minute, most others seconds).
exec .venv/bin/python -m pytest -n auto --dist worksteal tests "$@"
