#!/usr/bin/env bash
# Create .venv and install pbs-tune with its test extra. torch==2.13.0 goes first: on these
# CPU machines it is a local CPU build; a bare `torch` requirement would pull a CUDA build.
# --no-compile: Python compiles the modules a run imports when it first imports them, not every
# module of every package at install (about 45 s of the set-up on a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q --no-compile torch==2.13.0
.venv/bin/python -m pip install -q --no-compile -e '.[test]'
echo "pbs-tune installed in .venv"
