#!/usr/bin/env bash
# What a device `run` executes, from the repo root, with carry [".whl"] (benchmarks/gpu/README.md):
#
#   bash benchmarks/gpu/run_on_device.sh
#
# Installs the carried wheels (make_wheels.py) into $SITE, then under KERAS_BACKEND=jax: the GPU and
# JAX's view of it, a dependency check, the throughput benchmark (ResNet50, 224 px, batch 256, bf16),
# a timed 4-trial `ci` sweep (synthetic data: nothing to download) and its leaderboard. Everything goes
# to $OUT: log.txt, steps.tsv (step, exit code, wall seconds), summary.json (the MLflow runs' numbers),
# leaderboard.md. The MLflow store itself (saved models: too big for $OUT) stays in a temp folder.
#
# SMOKE=1: the same steps with tiny settings, to prove the kit on a CPU (32 px, batch 16, XLA on,
# a 2-trial sweep of a shrunken `ci`). PYTHON, SITE, OUT, BUDGET (s, all steps;
# default 560), STEP_TIMEOUT (s, one step; default 420) and
# THROUGHPUT_ARGS / SWEEP_ARGS (replacing the defaults below; with
# SWEEP_ARGS, EXPERIMENT names its experiment for the leaderboard) can be set.
set -u -o pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-$(mktemp -d /tmp/gpu-out.XXXX)}
WORK=$(mktemp -d /tmp/gpu-work.XXXX)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
printf 'step\trc\twall_s\n' > "$OUT/steps.tsv"

DEADLINE=$(($(date +%s) + ${BUDGET:-560}))  # all steps end by then: a run call is killed at 600 s
step() {  # step NAME COMMAND...: run within the time left, record exit code and wall time, go on
  local name=$1 start rc ms limit=$((DEADLINE - $(date +%s)))
  shift
  [ "$limit" -gt "${STEP_TIMEOUT:-420}" ] && limit=${STEP_TIMEOUT:-420}
  [ "$limit" -lt 10 ] && { echo "== $name: skipped, the budget is spent"; return 124; }
  echo "== $name (at most ${limit} s): $*"
  start=$(date +%s%N)
  timeout "$limit" "$@"
  rc=$?
  ms=$((($(date +%s%N) - start) / 1000000))
  printf '%s\t%s\t%d.%03d\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) | tee -a "$OUT/steps.tsv"
  return $rc
}

step install "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
unset MLFLOW_TRACKING_URI BENCHMARK_OPTUNA_STORAGE
export PYTHONPATH="$SITE:$PWD" KERAS_BACKEND=jax BENCHMARK_STORE="$WORK/mlruns" PYTHONUNBUFFERED=1
# The sweep's parent process touches the GPU too (the runs' device tag): no process may take 75% upfront.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
step check_deps "$PY" benchmarks/gpu/check_deps.py "$SITE"

if [ "${SMOKE:-0}" = 1 ]; then
  DEFAULT_THROUGHPUT="--backbone resnet50 --image-size 32 --batch-size 16 --precision bf16 --jit on --warmup 1 --steps 3"
  # ci.toml, smaller (300 training images, 2 epochs) and with XLA on (auto = off on CPU: op by op, ~10x slower)
  sed -e 's/^name = "ci"/name = "smoke"/' -e 's/^epochs = 3/epochs = 2\njit_compile = "on"/' \
      -e 's/^subset = .*/subset = { validation = 60, test = 60 }/' \
      -e 's/^synthetic = .*/synthetic = { train_size = 300, test_size = 60 }/' experiments/ci.toml > "$WORK/smoke.toml"
  DEFAULT_SWEEP="--experiment $WORK/smoke.toml --backbone resnet50 --trials 2 --quiet" DEFAULT_EXPERIMENT=smoke
else
  DEFAULT_THROUGHPUT="--backbone resnet50 --image-size 224 --batch-size 256 --precision bf16"
  DEFAULT_SWEEP="--experiment ci --backbone resnet50 --trials 4 --quiet" DEFAULT_EXPERIMENT=ci
fi
# shellcheck disable=SC2086  # word splitting of the argument strings is intended
step throughput "$PY" -m benchmark throughput ${THROUGHPUT_ARGS:-$DEFAULT_THROUGHPUT}
# shellcheck disable=SC2086
step sweep "$PY" -m benchmark sweep ${SWEEP_ARGS:-$DEFAULT_SWEEP}
step leaderboard "$PY" -m benchmark leaderboard --experiment "${EXPERIMENT:-$DEFAULT_EXPERIMENT}" --format markdown --no-plots --output "$OUT/leaderboard.md"
"$PY" benchmarks/gpu/summarize.py "$OUT/steps.tsv" "$OUT/summary.json"
echo "out: $OUT (store: $WORK/mlruns)"
