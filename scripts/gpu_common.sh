# Sourced by the scripts/*_gpu.sh and bench_library.sh runs on a GPU machine: strict mode, the
# repository root as working folder ($root), results in $OUT (default ./out), unbuffered Python.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
py=python3

install_readonly_wheel() {  # the checkout as a wheel, installed read-only in /tmp/site-ro
  rm -rf /tmp/site-ro /tmp/wheel build  # an earlier wheel's build/ keeps files the sources no longer have
  $py -m pip wheel -q --no-deps --no-build-isolation -w /tmp/wheel . 2>&1 | tail -2
  $py -m pip install -q --no-deps --target /tmp/site-ro /tmp/wheel/*.whl && chmod -R a-w /tmp/site-ro
}
