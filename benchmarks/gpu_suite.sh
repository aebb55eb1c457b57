#!/usr/bin/env bash
# Every GPU figure of the PQL runtime in one call of at most ~8 minutes, written to ONE JSON file.
#
# For a machine with one GPU (H100/H200, 16 cores) and no internet whose python3 has torch with CUDA but
# not the project's other needs (mujoco, mujoco-warp, warp-lang, tyro, gymnasium, array-api-compat, ...):
# those travel as wheels, prepared on a machine that reaches PyPI (see "Wheels" below).
#
#   bash benchmarks/gpu_suite.sh [--wheels DIR]... [--out DIR]    the suite: OUT/gpu_suite.json (+ gpu_suite.log)
#   bash benchmarks/gpu_suite.sh --dry-run [--out DIR]            the same steps on the CPU at tiny sizes (~1 min)
#   bash benchmarks/gpu_suite.sh --prepare [DIR]                  CPU machine with pip: the wheels, in parts
#   bash benchmarks/gpu_suite.sh --stage DIR                      GPU machine: keep one part for a later call
#
# Steps, in this order, each under `timeout` (a failure or a hang costs only its own section) and all within
# --budget-s (480 s, counted from the start, wheel install included; a step that no longer fits is skipped
# and says so):
#   info                        python, torch, the GPU, which modules import (versions)
#   learner_throughput          benchmarks.learner_throughput --device cuda --batch-size 8192 --hidden 512 256 128
#   env_throughput              benchmarks.env_throughput --task dclaw-turn --sim mujoco_warp --device cuda
#                               --num-envs 4096 (skipped where mujoco_warp does not import)
#   train_dclaw_process         train.dclaw --preset gpu --sim mujoco_warp --device cuda --placement process,
#                               --max-time-s TRAIN_S (60): env steps/s, updates/s, time to eval 0.8
#   train_dclaw_sequential      the same, --placement sequential (the three roles in one process)
#   test_cuda                   python -m pytest tests/toolkit/pql/test_cuda.py
#   learner_throughput_compile  learner_throughput with --compile (torch.compile, CUDA graphs)
#   train_shadow_hand           only with --with-shadow: train.shadow_hand --preset gpu --randomize, 240 s (past
#                               the 8 minutes: run it alone, --only info,train_shadow_hand --with-shadow)
# The JSON has a section per step ({status: ok|failed|timeout|skipped|not_run, rc, seconds, command, result}),
# "wheels", "suite" (budget, total_s, statuses) and "figures" (the headline numbers, flat). Run directories
# and full step outputs stay in the work folder (--work; /tmp), the log of every step in OUT/gpu_suite.log.
#
# Options:
#   --out DIR          where gpu_suite.json and gpu_suite.log go (default: $OUT, else ./gpu_suite_out)
#   --work DIR         run directories and step outputs (default: a new /tmp/gpu_suite.XXXXXX)
#   --wheels DIR       a wheel part from --prepare, or a folder of *.whl (repeatable); installed with
#                      pip --no-index --no-deps --target SITE, then PYTHONPATH=SITE:repo
#   --site DIR         install target (default /tmp/gpu_suite_site; reused while the machine is warm)
#   --stage-dir DIR    where parts wait for the rest (default /tmp/gpu_suite_stage)
#   --budget-s N       the whole suite's time (default 480)
#   --train-s N        --max-time-s of each D'Claw run (default 60)
#   --only A,B / --skip A,B   run only / leave out these steps
#   --with-shadow      add train_shadow_hand
#   --dry-run          CPU, tiny sizes, mujoco_batch, torch.compile disabled (TORCH_COMPILE_DISABLE=1: inductor
#                      takes ~40 s per learner on a 2-core CPU): checks the suite itself, not the figures
#   PYTHON=...         the interpreter (default python3)
#
# Wheels (a device call carries at most 64 MiB, the working tree included; warp-lang alone is a ~150 MB wheel):
#   1. Here, on a machine with pip:   bash benchmarks/gpu_suite.sh --prepare        (DIR defaults to .whl/,
#      which .gitignore keeps out of the working tree). It downloads, for CPython --python-version (3.12) on
#      manylinux x86_64, the versions installed here of benchmarks.gpu_suite_tools.GPU_WHEELS, recompresses
#      the large ones (xz; warp-lang 149 -> 101 MB, several CPU minutes) and cuts them into DIR/part-1 ...
#      DIR/part-K of --part-mib each (default: 63 MiB less the working tree), each with a MANIFEST.json.
#   2. On the GPU machine, K calls in a row (the machine keeps /tmp while warm, ~30 s between calls):
#        calls 1..K-1, each carrying DIR/part-i:   bash benchmarks/gpu_suite.sh --stage DIR/part-i
#        call K, carrying DIR/part-K:              bash benchmarks/gpu_suite.sh --wheels DIR/part-K
#      The last call rebuilds and checks (sha256) every wheel, installs them and runs the suite. Parts may
#      come in any order; a missing one is named in the "wheels" section and on the terminal.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
STEPS=(info learner_throughput env_throughput train_dclaw_process train_dclaw_sequential test_cuda
       learner_throughput_compile)
MIN_STEP_S=20

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_suite.sh: error: $*" >&2; exit 2; }
tools() { "$PY" -m benchmarks.gpu_suite_tools "$@"; }
now_ns() { date +%s%N; }

OUT_DIR=${OUT:-$REPO/gpu_suite_out}
WORK="" SITE="" STAGE_DIR="" BUDGET=480 TRAIN_S=60 ONLY="" SKIP="" DRY=0 SHADOW=0 MODE=suite
PREPARE_DIR=$REPO/.whl STAGE_SRC="" PART_MIB="" GPU_PY=3.12
WHEELS=()
ARGV="$*"
while (($#)); do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
        --work) WORK=${2:?--work needs a folder}; shift ;;
        --wheels) WHEELS+=("${2:?--wheels needs a folder}"); shift ;;
        --site) SITE=${2:?}; shift ;;
        --stage-dir) STAGE_DIR=${2:?}; shift ;;
        --budget-s) BUDGET=${2:?}; shift ;;
        --train-s) TRAIN_S=${2:?}; shift ;;
        --only) ONLY=${2:?}; shift ;;
        --skip) SKIP=${2:?}; shift ;;
        --with-shadow) SHADOW=1 ;;
        --dry-run) DRY=1 ;;
        --prepare) MODE=prepare; if [[ ${2:-} != "" && ${2:0:2} != "--" ]]; then PREPARE_DIR=$2; shift; fi ;;
        --part-mib) PART_MIB=${2:?}; shift ;;
        --python-version) GPU_PY=${2:?}; shift ;;
        --stage) MODE=stage; STAGE_SRC=${2:?--stage needs a part folder}; shift ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
[[ $BUDGET =~ ^[0-9]+$ && $TRAIN_S =~ ^[0-9]+$ ]] || die "--budget-s and --train-s take whole seconds"
((SHADOW)) && STEPS+=(train_shadow_hand)
for s in ${ONLY//,/ } ${SKIP//,/ }; do
    [[ " ${STEPS[*]} train_shadow_hand " == *" $s "* ]] || die "no step '$s'; steps: ${STEPS[*]} train_shadow_hand"
done
if ((DRY)); then  # hermetic: nothing outside the work folder
    WORK=${WORK:-$(mktemp -d /tmp/gpu_suite_dry.XXXXXX)}
    SITE=${SITE:-$WORK/site} STAGE_DIR=${STAGE_DIR:-$WORK/stage}
fi
SITE=${SITE:-/tmp/gpu_suite_site} STAGE_DIR=${STAGE_DIR:-/tmp/gpu_suite_stage}

# --- --prepare: download and cut the wheels (CPU machine with pip) --------------------------------------------
if [[ $MODE == prepare ]]; then
    if [[ -z $PART_MIB ]]; then  # 63 MiB less what travels anyway (tracked and untracked, not ignored, files)
        tree=$(git ls-files -z -co --exclude-standard 2>/dev/null | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
        PART_MIB=$(awk -v t="${tree:-2097152}" 'BEGIN { printf "%.1f", 63 - t / 1048576 - 0.5 }')
    fi
    platforms=(--platform manylinux1_x86_64 --platform manylinux2014_x86_64)
    for n in $(seq 5 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    mapfile -t specs < <(tools specs) || die "cannot list the wheels"
    mkdir -p "$PREPARE_DIR/download" || die "cannot create $PREPARE_DIR"
    rm -f "$PREPARE_DIR"/download/*.whl
    echo "downloading for CPython $GPU_PY, manylinux x86_64: ${specs[*]}"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$GPU_PY" --implementation cp \
        "${platforms[@]}" -d "$PREPARE_DIR/download" "${specs[@]}" || die "pip download failed"
    echo "packing into parts of at most $PART_MIB MiB (xz of the large wheels takes a few CPU minutes)"
    tools pack --wheels "$PREPARE_DIR/download" --out "$PREPARE_DIR" --part-mib "$PART_MIB" || exit 2
    parts=("$PREPARE_DIR"/part-*)
    rel=${PREPARE_DIR#"$REPO"/}
    echo
    echo "On the GPU machine, ${#parts[@]} call(s) in a row, each carrying its part ($rel/part-N):"
    for ((i = 1; i < ${#parts[@]}; i++)); do echo "  bash benchmarks/gpu_suite.sh --stage $rel/part-$i"; done
    echo "  bash benchmarks/gpu_suite.sh --wheels $rel/part-${#parts[@]}     # installs, runs, writes \$OUT/gpu_suite.json"
    exit 0
fi

# --- --stage: keep a part on this machine for the call that brings the last one -------------------------------
if [[ $MODE == stage ]]; then
    tools unpack --stage "$STAGE_DIR" --into "$STAGE_DIR/wheels" "$STAGE_SRC"
    rc=$?
    ((rc == 0)) && echo "every wheel is here: run  bash benchmarks/gpu_suite.sh  (no part needed)"
    ((rc == 3)) && echo "staged $STAGE_SRC; the JSON above names the parts still missing"
    ((rc == 0 || rc == 3)) && exit 0
    exit "$rc"
fi

# --- the suite ----------------------------------------------------------------------------------------------
START_S=$(date +%s)
DEADLINE=$((START_S + BUDGET))
WORK=${WORK:-$(mktemp -d /tmp/gpu_suite.XXXXXX)}
mkdir -p "$OUT_DIR" "$WORK" || die "cannot create $OUT_DIR or $WORK"
OUT_DIR=$(cd "$OUT_DIR" && pwd) WORK=$(cd "$WORK" && pwd)
JSON=$OUT_DIR/gpu_suite.json LOG=$OUT_DIR/gpu_suite.log
: >"$LOG"
steps_csv=$(IFS=,; echo "${STEPS[*]}")
init_args=(--json "$JSON" --steps "$steps_csv" --budget-s "$BUDGET" --argv "$ARGV")
((DRY)) && init_args+=(--dry-run)
tools init "${init_args[@]}" || die "cannot write $JSON (is $PY a Python 3?)"
finish_suite() { tools finish --json "$JSON" >"$WORK/figures.json" 2>>"$LOG"; }
trap 'finish_suite; echo "gpu_suite.sh: stopped; partial results in $JSON"; exit 143' TERM INT
echo "gpu_suite: $( ((DRY)) && echo "DRY RUN (CPU, tiny sizes)" || echo "GPU") | budget ${BUDGET}s | JSON $JSON | work $WORK"

selected() {
    local s=$1
    [[ -n $ONLY && ",$ONLY," != *",$s,"* ]] && return 1
    [[ -n $SKIP && ",$SKIP," == *",$s,"* ]] && return 1
    return 0
}
skip() { tools record --json "$JSON" --name "$1" --status skipped --kind none --reason "$2"; }

# run_step NAME KIND LIMIT_S RUN_DIR CMD...: CMD under timeout, outputs to the work folder and the log, its
# section into the JSON. RUN_DIR ("" for none) is the training run whose metrics.jsonl the section summarises.
run_step() {
    local name=$1 kind=$2 limit=$3 run_dir=$4
    shift 4
    selected "$name" || { skip "$name" "not selected (--only/--skip)"; return 0; }
    local left=$((DEADLINE - $(date +%s)))
    ((left < MIN_STEP_S)) && { skip "$name" "the suite's budget (--budget-s $BUDGET) is spent"; return 0; }
    ((limit > left)) && limit=$left
    echo "== $name (at most ${limit}s): $*"
    local t0 t1 rc
    t0=$(now_ns)
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null
    rc=$?
    t1=$(now_ns)
    { echo "===== $name: $* (rc $rc)"; cat "$WORK/$name.out"; echo "----- stderr"; cat "$WORK/$name.err"; } >>"$LOG"
    tail -n 4 "$WORK/$name.out" | cut -c1-400
    ((rc != 0)) && tail -n 6 "$WORK/$name.err" | cut -c1-400
    local extra=()
    [[ -n $run_dir ]] && extra+=(--run-dir "$run_dir")
    [[ -n ${STEP_NOTE:-} ]] && extra+=(--note "$STEP_NOTE")
    tools record --json "$JSON" --name "$name" --kind "$kind" --rc "$rc" --limit-s "$limit" \
        --seconds "$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f", d / 1e9 }')" --command-line "$*" \
        --stdout "$WORK/$name.out" --stderr "$WORK/$name.err" "${extra[@]}"
    STEP_NOTE=""
}

# --- wheels -------------------------------------------------------------------------------------------------
if ((${#WHEELS[@]})) || [[ -f $STAGE_DIR/MANIFEST.json ]]; then
    unpacked=$(tools unpack --stage "$STAGE_DIR" --into "$STAGE_DIR/wheels" "${WHEELS[@]}" 2>"$WORK/unpack.err")
    rc=$?
    if ((rc == 3)); then
        echo "wheels incomplete: $unpacked"
        tools record --json "$JSON" --name wheels --kind none --status failed --result-json "$unpacked" \
            --reason "parts missing (stage them with --stage in the calls before this one)"
    elif ((rc != 0)); then
        cat "$WORK/unpack.err"
        tools record --json "$JSON" --name wheels --kind none --status failed --stderr "$WORK/unpack.err" \
            --reason "the wheel parts could not be reassembled"
    elif ((DRY)); then
        tools record --json "$JSON" --name wheels --kind none --status ok --result-json "$unpacked" \
            --note "dry run: reassembled and checked, not installed (they are for the GPU machine's Python)"
    else
        digest=$(ls "$STAGE_DIR/wheels" | sort | cksum | cut -d' ' -f1)
        if [[ -f $SITE/.gpu_suite_installed && $(cat "$SITE/.gpu_suite_installed") == "$digest" ]]; then
            note="already installed in $SITE (this machine, an earlier call)"
            rc=0
        else
            echo "== installing $(ls "$STAGE_DIR"/wheels/*.whl | wc -l) wheels into $SITE"
            t0=$(now_ns)
            timeout 300 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$SITE" "$STAGE_DIR"/wheels/*.whl >"$WORK/pip.out" 2>&1
            rc=$?
            cat "$WORK/pip.out" >>"$LOG"
            ((rc == 0)) && echo "$digest" >"$SITE/.gpu_suite_installed"
            note="pip install --target $SITE in $(awk -v d=$(($(now_ns) - t0)) 'BEGIN { printf "%.1f", d / 1e9 }') s"
        fi
        if ((rc == 0)); then
            tools record --json "$JSON" --name wheels --kind none --status ok --result-json "$unpacked" --note "$note"
        else
            tail -n 20 "$WORK/pip.out"
            tools record --json "$JSON" --name wheels --kind none --rc "$rc" --stderr "$WORK/pip.out" \
                --reason "pip install failed"
        fi
    fi
elif [[ -f $SITE/.gpu_suite_installed ]]; then
    tools record --json "$JSON" --name wheels --kind none --status ok --note "installed in $SITE by an earlier call"
else
    tools record --json "$JSON" --name wheels --kind none --status skipped \
        --reason "no --wheels: the Python as it is (see --prepare)"
fi
if ((!DRY)) && [[ -f $SITE/.gpu_suite_installed ]]; then
    export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

# --- what this machine can run ----------------------------------------------------------------------------------
info_args=()
((DRY)) || info_args+=(--imports)  # import, not only find, each module (a few seconds on a loaded 2-core CPU)
run_step info info 60 "" "$PY" -m benchmarks.gpu_suite_tools info "${info_args[@]}"
CUDA_OK=0 WARP_OK=0
[[ $(tools get --json "$JSON" info.result.cuda_available) == True ]] && CUDA_OK=1
[[ -n $(tools get --json "$JSON" info.result.modules.mujoco_warp) ]] && WARP_OK=1
NO_CUDA="torch sees no CUDA device here (use --dry-run on a CPU machine)"
NO_WARP="mujoco_warp does not import here: bring the wheels (--wheels; see --prepare)"

RUNS=$WORK/runs
mkdir -p "$RUNS"
if ((DRY)); then
    DEV=(--device cpu) SIM=(--sim mujoco_batch --device cpu)
    LEARNER=(--batch-size 64 --hidden 32 32 --updates 5 --repeats 2 --warmup 2 --replay-size 5000)
    COMPILE=(env TORCH_COMPILE_DISABLE=1) COMPILE_ARGS=(--compile)
    ENV_ARGS=(--num-envs 8 --steps 20 --nthread 1)
    # A few hundred env steps, not a time: the process placement's clock includes its roles' start-up.
    TRAIN=(--preset cpu --num-envs 8 --max-env-steps 400 --max-time-s 60 --pql.batch-size 64 --pql.actor-hidden 32 32
           --pql.critic-hidden 32 32 --pql.replay-size 20000 --pql.warmup-steps 4 --log.eval-envs 4
           --log.eval-interval-s 1 --log.log-interval-s 1)
    SHADOW_TRAIN=("${TRAIN[@]}")
    TRAIN_LIMIT=90 SHADOW_LIMIT=90
    CUDA_OK=1 WARP_OK=1  # nothing here needs either
else
    DEV=(--device cuda) SIM=(--sim mujoco_warp --device cuda)
    LEARNER=(--batch-size 8192 --hidden 512 256 128)
    COMPILE=() COMPILE_ARGS=(--compile --repeats 3 --warmup 20)
    ENV_ARGS=(--num-envs 4096 --steps 100 --nthread 0)
    TRAIN=(--preset gpu --max-time-s "$TRAIN_S" --log.eval-interval-s 5 --log.log-interval-s 2)
    SHADOW_TRAIN=(--preset gpu --randomize --max-time-s 240 --log.eval-interval-s 20 --log.log-interval-s 5)
    TRAIN_LIMIT=$((TRAIN_S + 120)) SHADOW_LIMIT=360
fi
LOGGING=(--log.checkpoint-interval-s 100000 --log.no-tensorboard)

# --- the steps ------------------------------------------------------------------------------------------------
for step in "${STEPS[@]:1}"; do
    case $step in
        learner_throughput)
            ((CUDA_OK)) || { skip "$step" "$NO_CUDA"; continue; }
            run_step "$step" json 150 "" "$PY" -m benchmarks.learner_throughput "${DEV[@]}" "${LEARNER[@]}" --json ;;
        env_throughput)
            ((CUDA_OK)) || { skip "$step" "$NO_CUDA"; continue; }
            ((WARP_OK)) || { skip "$step" "$NO_WARP"; continue; }
            run_step "$step" json 180 "" "$PY" -m benchmarks.env_throughput --task dclaw-turn "${SIM[@]}" \
                "${ENV_ARGS[@]}" --json ;;
        train_dclaw_process|train_dclaw_sequential)
            ((CUDA_OK)) || { skip "$step" "$NO_CUDA"; continue; }
            ((WARP_OK)) || { skip "$step" "$NO_WARP"; continue; }
            placement=${step#train_dclaw_}
            run_step "$step" train "$TRAIN_LIMIT" "$RUNS/dclaw-$placement" "$PY" -m train.dclaw "${TRAIN[@]}" \
                "${SIM[@]}" --placement "$placement" --run-dir "$RUNS/dclaw-$placement" "${LOGGING[@]}" ;;
        test_cuda)
            ((DRY)) && STEP_NOTE="dry run: no CUDA device, the tests skip"
            run_step "$step" pytest 180 "" "$PY" -m pytest -q -p no:cacheprovider -o addopts=-ra \
                tests/toolkit/pql/test_cuda.py ;;
        learner_throughput_compile)
            ((CUDA_OK)) || { skip "$step" "$NO_CUDA"; continue; }
            ((DRY)) && STEP_NOTE="dry run: TORCH_COMPILE_DISABLE=1, torch.compile is a no-op"
            run_step "$step" json 240 "" "${COMPILE[@]}" "$PY" -m benchmarks.learner_throughput "${DEV[@]}" \
                "${LEARNER[@]}" "${COMPILE_ARGS[@]}" --json ;;
        train_shadow_hand)
            ((CUDA_OK)) || { skip "$step" "$NO_CUDA"; continue; }
            ((WARP_OK)) || { skip "$step" "$NO_WARP"; continue; }
            run_step "$step" train "$SHADOW_LIMIT" "$RUNS/shadow_hand" "$PY" -m train.shadow_hand "${SHADOW_TRAIN[@]}" \
                "${SIM[@]}" --run-dir "$RUNS/shadow_hand" "${LOGGING[@]}" ;;
    esac
done

finish_suite
echo "gpu_suite: done in $(($(date +%s) - START_S)) s; figures: $(cat "$WORK/figures.json")"
echo "gpu_suite: $JSON"
"$PY" - "$JSON" <<'EOF'
import json, sys
status = json.load(open(sys.argv[1]))["suite"]["status"]
bad = {name: s for name, s in status.items() if s not in ("ok", "skipped")}
print("gpu_suite: every step ok or skipped" if not bad else f"gpu_suite: not ok: {bad}")
sys.exit(1 if bad else 0)
EOF
