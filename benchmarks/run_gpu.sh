#!/usr/bin/env bash
# GPU benchmark runs in two parts that each fit one ~9-minute command on a lent H100 (JAX compiles included).
#
#   bash benchmarks/run_gpu.sh A   # population.py: digits MLPs, Fashion-MNIST MLPs, Small CNNs and SIRENs (no recipes)
#   bash benchmarks/run_gpu.sh B   # probing.py, then lora.py (Spectral DeTuning speed), then selection.py
#                                  # with whatever time is left
#
# Run from the repository root. Every step has a wall-clock limit taken from the part's budget
# (BUDGET_S, default 470 s); the scripts rewrite their results after every case, so a step cut off
# by its limit keeps what it measured. Results land in benchmarks/results/*_gpu.{json,md} (the
# scripts pick the _gpu stems themselves when JAX runs on a GPU); when $OUT is set they, and this
# part's log, are copied there after every step.
set -uo pipefail

part="${1:-}"
if [[ "$part" != "A" && "$part" != "B" ]]; then
    echo "usage: bash benchmarks/run_gpu.sh A|B" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
BUDGET_S="${BUDGET_S:-470}"
START=$(date +%s)
RES="$ROOT/benchmarks/results"
LOG="$(mktemp /tmp/run_gpu_${part}_XXXX.log)"
exec > >(tee -a "$LOG") 2>&1

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

collect() {  # copy this part's results (and the log so far) into $OUT
    [[ -n "${OUT:-}" ]] || return 0
    mkdir -p "$OUT"
    local stem
    for stem in "$@"; do
        for f in "$RES/$stem.json" "$RES/$stem.md"; do
            [[ -f "$f" ]] && cp "$f" "$OUT/"
        done
    done
    cp "$LOG" "$OUT/run_gpu_${part}.log"
}

step() {  # step SECONDS STEMS -- command...: run with a time limit, report, collect
    local limit="$1" stems="$2"
    shift 3
    if ((limit < 20)); then
        echo "== skipped (only ${limit} s left): $*"
        return 0
    fi
    echo "== $(date -u +%H:%M:%S) [$(($(date +%s) - START)) s elapsed, limit ${limit} s] $*"
    timeout -k 10 "$limit" "$@"
    local rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "== TIMED OUT after ${limit} s (results written so far are kept): $*"
    elif ((rc != 0)); then
        echo "== exit code $rc: $*"
    fi
    # shellcheck disable=SC2086
    collect $stems
    return 0
}

min() { if (($1 < $2)); then echo "$1"; else echo "$2"; fi; }

echo "== part $part on $(hostname), budget ${BUDGET_S} s, python $PY"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
backend="$("$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null | tail -1)"
"$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, \
'cuda', torch.cuda.is_available())"
if [[ "$backend" != "gpu" && "${REQUIRE_GPU:-1}" == "1" ]]; then
    echo "== JAX backend is '$backend', not gpu: stopping (REQUIRE_GPU=0 runs anyway, with CPU sizes and stems)"
    collect
    exit 1
fi

if [[ "$part" == "A" ]]; then
    step "$(($(left) - 10))" "training_gpu" -- \
        "$PY" benchmarks/population.py --cases mlp-small,mlp-fmnist,cnn-fmnist,siren
else
    step "$(min 230 $(($(left) - 40)))" "probing_gpu" -- "$PY" benchmarks/probing.py
    step "$(min 150 $(($(left) - 10)))" "lora_gpu" -- "$PY" benchmarks/lora.py --only speed,unreduced
    if (($(left) >= 90)); then
        step "$(($(left) - 10))" "selection_gpu" -- "$PY" benchmarks/selection.py
    else
        echo "== selection.py skipped: only $(left) s left"
    fi
fi
echo "== part $part done in $(($(date +%s) - START)) s"
sleep 1  # let tee flush the log
collect
