#!/usr/bin/env bash
# Run the test suite on CPU: Triton kernels execute in the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=1
exec .venv/bin/python -m pytest tests "$@"
