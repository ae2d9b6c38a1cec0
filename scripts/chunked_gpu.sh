#!/usr/bin/env bash
# Issue 36 on one GPU: chunked prefill with a prefix state (python -m pbs_tune.bench.chunked), from
# the checkout installed as a read-only wheel and run from /tmp (nothing depends on the checkout's place).
#   STEP=op      a short smoke run first (a bug costs seconds), then every workload family at a 127k
#                prefix in 2k/4k/8k chunks, and the crossover of this GPU's shipped profile, written
#                into the checkout's copy of it (--update) and copied to $OUT
#   STEP=serve   the mixed family's stage times and held keys (--breakdown), the 128k mixed prompt chunk
#                by chunk, the trained fixture through `apply` and generate(prefill_chunk_size=2048)
#                (bench/traffic.py --parts fixture), and this GPU's crossovers if its profile has none
source "$(dirname "$0")/gpu_common.sh"
install_readonly_wheel
GPU=$(cd /tmp && PYTHONPATH=/tmp/site-ro $py -c "from pbs_tune.profile.target import detect_gpu; print(detect_gpu())")
cd /tmp
run() { PYTHONPATH=/tmp/site-ro $py -m "$@"; }
case "${STEP:-op}" in
  op)
    run pbs_tune.bench.chunked --parts families,prompt --prefix 8k --sizes 2k --prompt 8k --families mixed \
        --out "$OUT/smoke.json" > "$OUT/smoke.txt" 2>&1 || { tail -30 "$OUT/smoke.txt"; exit 1; }
    run pbs_tune.bench.chunked --parts families --out "$OUT/chunked_families.json" 2>&1 | tail -20
    run pbs_tune.bench.chunked --parts crossover --update --profile "$root/configs/$GPU.yaml" \
        --out "$OUT/chunked_crossover.json" > "$OUT/crossover.txt" 2>&1; tail -8 "$OUT/crossover.txt"
    cp "$root/configs/$GPU.yaml" "$OUT/"
    ;;
  serve)
    run pbs_tune.bench.chunked --parts families --families mixed --breakdown --out "$OUT/chunked_breakdown.json" \
        2>&1 | tail -3
    run pbs_tune.bench.chunked --parts prompt --out "$OUT/chunked_prompt.json" 2>&1 | tail -4
    run pbs_tune.bench.traffic --parts fixture --fixture "$root/fixtures/byte-llama" --fixture-chunk 2k \
        --out "$OUT/chunked_fixture.json" 2>&1 | tail -3
    if ! grep -q min_chunk "$root/configs/$GPU.yaml"; then  # this GPU's crossovers, where not yet measured
      run pbs_tune.bench.chunked --parts crossover --update --profile "$root/configs/$GPU.yaml" \
          --out "$OUT/chunked_crossover_$GPU.json" > /dev/null 2>&1 && cp "$root/configs/$GPU.yaml" "$OUT/"
    fi
    ;;
  gather)  # the prefix gather as whole rows, the held keys, and the fixture where PBS serves it (H100)
    run pbs_tune.bench.chunked --parts families --families mixed --breakdown --out "$OUT/chunked_breakdown.json" \
        2>&1 | tail -3
    [ "$GPU" = h100-sxm ] && run pbs_tune.bench.traffic --parts fixture --fixture "$root/fixtures/byte-llama" \
        --fixture-chunk 2k --out "$OUT/chunked_fixture.json" 2>&1 | tail -2
    ;;
esac
ls -la "$OUT"
