#!/usr/bin/env bash
# Create .venv and install pbs-tune with its test extra. torch==2.13.0 goes first: on these
# CPU machines it is a local CPU build; a bare `torch` requirement would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
# The editable install of a package-dir mapping (configs/, cache/ as pbs_tune.configs/.cache) makes
# setuptools print a notice about same-named folders: nothing to act on here, so it is silenced.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e '.[test]'
echo "pbs-tune installed in .venv"
