#!/usr/bin/env bash
# One command for the day a GPU host appears: everything only a GPU can prove, in under 8 minutes.
#
#   tools/gpu_acceptance.sh                 # on a GPU host, from the repository root
#   tools/gpu_acceptance.sh --dry-run       # anywhere: every GPU step skips with its reason
#   tools/gpu_acceptance.sh --skip-install  # the TensorRT/onnxruntime-gpu wheels are already installed
#   OUT=dir BUDGET=450 tools/gpu_acceptance.sh
#
# Steps, each time-boxed (its own limit, and never past the global BUDGET seconds), logged to
# OUT/logs/<step>.log, and run whatever happened before (a failure never stops the run). The order is
# the order of importance: what is past the budget is recorded as skipped, "out of time".
#   install   pip install the TensorRT 11.4 wheels for this driver's CUDA and onnxruntime-gpu
#   doctor    vit-deploy doctor --json (what this machine can do, and why not)
#   prepare   CPU side, in the background from the start, one job per model: FP16, INT8 and FP8 graphs
#             (in parallel) of ViT-B/16 at 224 and 384 (random weights: speed; fallback off) and of
#             the real ViT-Ti/16 (../shared/realdata; INT8/FP8 calibrated on its ImageNet photos);
#             and a --dynamic-res 224:512 ViT-B/16 export
#   pytest    the GPU-marked tests (tests/steps/test_engine.py and the rest), while the graphs are made
#   engines   FP16, INT8 and FP8 engines (profile 1..128, opt 64), each validated against PyTorch at
#             build; b16@224 first, then b16@384 FP16, the real ViT-Ti (compared on held-out photos:
#             real top-1), then b16@384 INT8/FP8
#   bench     vit-deploy bench --device cuda over the three engines at batch 1/8/64/128, b16@224 and
#             b16@384: img/s, the INT8 and FP8 speed-up over FP16, % of the GPU's dense peak
#   dynamic   one engine of the --dynamic-res export (profile 224..512, opt 384, batch 1..8), validated
#             at 5 sizes at build, then compared with PyTorch at 224, 384 and 320x448
#   triton    a tensorrt_plan smoke test, when a tritonserver with the tensorrt backend is present
# OUT/gpu-report.json and OUT/gpu-report.md are written at the end, also after a failure or Ctrl-C;
# the report adds each engine's layer precisions and whether its attention ran as a fused kernel.
set -u

DRY_RUN=0
INSTALL=1
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --skip-install) INSTALL=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown option $arg (use --dry-run, --skip-install)" >&2; exit 1 ;;
  esac
done

cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python}
OUT=${OUT:-gpu-acceptance}
BUDGET=${BUDGET:-450}            # seconds for the whole run: under 8 minutes with the report
REALDATA=${REALDATA:-../shared/realdata}
ART="$OUT/artifacts"
mkdir -p "$OUT/logs" "$OUT/results" "$ART"
STEPS="$OUT/steps.tsv"
: > "$STEPS"
START=$(date +%s)
export VIT_DEPLOY_CACHE="$OUT/cache"

elapsed() { echo $(( $(date +%s) - START )); }

record() {  # name status seconds reason command
  local clean
  clean=$(printf '%s' "$4" | tr '\t\n' '  ' | cut -c1-600)
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$clean" "$(printf '%s' "$5" | tr '\t\n' '  ')" >> "$STEPS"
  printf '[%4ss] %-24s %-7s %s\n' "$(elapsed)" "$1" "$2" "$clean"
}

write_report() {
  "$PY" tools/gpu_report.py "$OUT" --dry-run "$DRY_RUN" --budget "$BUDGET" --seconds "$(elapsed)" \
    || echo "error: could not write the reports in $OUT" >&2
}

# Every step runs as `timeout ... &`, which leads its own process group (timeout's setpgid), and is
# listed in $RUNNING (a file named by its pid, holding the step's name) until it ends. On Ctrl-C,
# TERM or the time limit the trap stops them all at once, background prepare jobs included, and
# still writes the report: GPU minutes are too scarce to wait for a step, or to leave a b16 export
# running after the script has gone.
RUNNING="$OUT/.running"
rm -rf "$RUNNING"; mkdir -p "$RUNNING"
declare -A PREP_PID=()  # model -> pid of its background prepare step

stop_all() {
  local pid groups="" left i
  for pid in "${PREP_PID[@]}"; do kill -TERM "$pid" 2>/dev/null; done  # their step functions: no record after this
  for pid in $(ls "$RUNNING" 2>/dev/null); do
    groups="$groups $pid"
    record "$(cat "$RUNNING/$pid" 2>/dev/null)" fail 0 "interrupted: stopped with the run" ""
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  done
  for i in 1 2 3 4 5 6 7 8 9 10; do  # up to 2 s for a clean exit, then KILL what is left
    left=""
    for pid in $groups; do kill -0 -- "-$pid" 2>/dev/null && left="$left $pid"; done
    [ -z "$left" ] && break
    sleep 0.2
  done
  for pid in $left; do kill -KILL -- "-$pid" 2>/dev/null; done
  rm -rf "$RUNNING"
}

on_interrupt() {
  trap '' INT TERM  # a second Ctrl-C must not cut the clean-up or the report short
  stop_all
  record interrupted fail 0 "interrupted" ""
  write_report
  exit 130
}
trap on_interrupt INT TERM

# Why there is no usable GPU (empty when TensorRT and CUDA work): the doctor's own probe.
GPU_REASON=$("$PY" -c "from vit_deploy.trt.probe import unavailable_reason as r; print(r() or '')" 2>&1 | tail -1)
[ "$DRY_RUN" = 1 ] && GPU_REASON="dry run${GPU_REASON:+ ($GPU_REASON)}"

# step NAME LIMIT NEEDS_GPU COMMAND: run COMMAND in bash, time-boxed, logged; never stops the run.
step() {
  local name=$1 limit=$2 gpu=$3 cmd=$4 left rc t0 log="$OUT/logs/$1.log"
  if [ "$gpu" = gpu ] && [ -n "$GPU_REASON" ]; then
    record "$name" skip 0 "needs a GPU: $GPU_REASON" "$cmd"; return 0
  fi
  left=$(( BUDGET - $(elapsed) ))
  if [ "$left" -lt 5 ]; then
    record "$name" skip 0 "out of time: the ${BUDGET}s budget is spent" "$cmd"; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$(date +%s)
  { echo "\$ $cmd"; echo "# limit ${limit}s"; } > "$log"
  # in the background and waited for: `wait` returns at once when the script is signalled
  timeout --kill-after=10 "$limit" bash -c "$cmd" >> "$log" 2>&1 &
  local pid=$!
  echo "$name" > "$RUNNING/$pid"
  wait "$pid"
  rc=$?
  rm -f "$RUNNING/$pid"
  local secs=$(( $(date +%s) - t0 ))
  if [ "$rc" = 0 ]; then
    record "$name" pass "$secs" "" "$cmd"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    record "$name" timeout "$secs" "stopped after its ${limit}s limit (log: $log)" "$cmd"
  else
    record "$name" fail "$secs" "exit $rc: $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-300)" "$cmd"
  fi
  return 0
}

# --- 1. install ------------------------------------------------------------------------------
CUDA_MAJOR=$("$PY" -c "from vit_deploy.trt.probe import cuda_major; print(cuda_major())" 2>/dev/null || echo 13)
INSTALL_CMD="$PY -m pip install 'tensorrt-cu${CUDA_MAJOR}==11.4.0.106' && \
($PY -m pip uninstall -y onnxruntime || true) && $PY -m pip install onnxruntime-gpu"
if [ "$DRY_RUN" = 1 ]; then
  record install skip 0 "dry run: would run the install command" "$INSTALL_CMD"
elif [ "$INSTALL" = 0 ]; then
  record install skip 0 "--skip-install" "$INSTALL_CMD"
else
  step install 150 any "$INSTALL_CMD"
  GPU_REASON=$("$PY" -c "from vit_deploy.trt.probe import unavailable_reason as r; print(r() or '')" 2>&1 | tail -1)
fi

# --- 2. doctor (runs everywhere) ---------------------------------------------------------------
step doctor 60 any "$PY -m vit_deploy.cli doctor --json > $OUT/results/doctor.json"

# --- 3. prepare the graphs on the CPU, in the background -------------------------------------------
B224="$ART/b16-224"
B384="$ART/b16-384"
TI="$ART/ti16-224"
TI_WEIGHTS="$REALDATA/vit-ti16-augreg/model.safetensors"
PHOTOS="$REALDATA/imagenet-dev-500"
HELDOUT="$REALDATA/imagenet-val-dev"
PRECISIONS="fp16 int8 fp8"
CLI="$PY -m vit_deploy.cli"
# CUDA_VISIBLE_DEVICES= keeps these CPU-only: build-engine then stops with exit 3 after writing and
# validating each graph, and the engines are built in step 5, one at a time on the GPU. The three
# precision graphs of a model are made in parallel (16 cores). Random-weight b16 is for speed: 16
# calibration photos and no accuracy fallback (--max-float-layers 0).
prep() {  # base export_args quantize_args
  echo "export CUDA_VISIBLE_DEVICES=; $CLI export $2 --out $1 --force && { \
$CLI build-engine $1 --fp16 --out $1-fp16 --force & \
$CLI build-engine $1 --int8 $3 --out $1-int8 --force & \
$CLI build-engine $1 --fp8 $3 --out $1-fp8 --force & wait; }; true"
}
B16_QUANT="--calib calibration/photos.txt --calib-count 16 --max-float-layers 0"
PREP_B224=$(prep "$B224" "--model b16 --res 224" "$B16_QUANT")
PREP_B384=$(prep "$B384" "--model b16 --res 384" "$B16_QUANT")
PREP_TI=$(prep "$TI" "--model ti16 --res 224 --weights $TI_WEIGHTS --crop-pct 0.9" "--calib $PHOTOS --calib-count 256")
B16D="$ART/b16-384-dyn"
PREP_B16D="export CUDA_VISIBLE_DEVICES=; $CLI export --model b16 --res 384 --dynamic-res 224:512 --out $B16D --force"
if [ "$DRY_RUN" = 1 ]; then
  record prepare-b16-224 skip 0 "dry run: CPU preparation runs on the GPU host" "$PREP_B224"
  record prepare-b16-384 skip 0 "dry run: CPU preparation runs on the GPU host" "$PREP_B384"
  record prepare-ti16 skip 0 "dry run: CPU preparation runs on the GPU host" "$PREP_TI"
  record prepare-b16-dyn skip 0 "dry run: CPU preparation runs on the GPU host" "$PREP_B16D"
else
  step prepare-b16-224 400 any "$PREP_B224" & PREP_PID[b224]=$!
  step prepare-b16-384 400 any "$PREP_B384" & PREP_PID[b384]=$!
  step prepare-b16-dyn 300 any "$PREP_B16D" & PREP_PID[b16d]=$!
  if [ -f "$TI_WEIGHTS" ] && [ -d "$PHOTOS" ]; then
    step prepare-ti16 400 any "$PREP_TI" & PREP_PID[ti16]=$!
  else
    record prepare-ti16 skip 0 "no real ViT-Ti at $TI_WEIGHTS or photos at $PHOTOS (set REALDATA)" "$PREP_TI"
  fi
fi
prepared() { [ -n "${PREP_PID[$1]:-}" ] && wait "${PREP_PID[$1]}" 2>/dev/null; PREP_PID[$1]=""; }

# --- 4. the GPU-marked tests, while the graphs are made ----------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  step pytest-collect 60 any "$PY -m pytest -m gpu --collect-only -q -p no:cacheprovider"
fi
step pytest-gpu 120 gpu "$PY -m pytest -m gpu -rs -q -p no:cacheprovider --junitxml=$OUT/results/pytest-gpu.xml"

# --- 5. engines (validated against PyTorch at build) and 6. bench, in order of importance --------------
PROFILE="--min-batch 1 --opt-batch 64 --max-batch 128"
engine() {  # model base precision [compare args]
  step "engine-$1-$3" 120 gpu "$CLI build-engine $2-$3 --out $2-$3-trt $PROFILE --force --json \
> $OUT/results/engine-$1-$3.json"
  if [ -n "${4:-}" ]; then
    step "compare-$1-$3" 60 gpu "$CLI compare $2-$3-trt $4 --batch-sizes 1,64 --json > $OUT/results/compare-$1-$3.json"
  fi
}
bench() {  # model base backends
  step "bench-$1" 100 gpu "$CLI bench $2 --device cuda --backends $3 --batch-sizes 1,8,64,128 --repeats 3 \
--out $OUT/bench-$1 --json > $OUT/results/bench-$1.json"
}
TRT_ROWS="tensorrt-fp16,tensorrt-int8,tensorrt-fp8"
prepared b224
for precision in $PRECISIONS; do engine b16-224 "$B224" "$precision"; done
bench b16-224 "$B224" "$TRT_ROWS"
prepared b384
engine b16-384 "$B384" fp16
prepared ti16
for precision in $PRECISIONS; do
  engine ti16 "$TI" "$precision" "--images $HELDOUT --max-images 500"
done
for precision in int8 fp8; do engine b16-384 "$B384" "$precision"; done
bench b16-384 "$B384" "$TRT_ROWS"

# --- 5b. one dynamic-resolution engine: parity at three sizes ------------------------------------------
# FP32, so TensorRT's cubic Resize of the position embeddings is held to the export's 1e-5 (TF32 is off);
# max batch 8 keeps the build and the CPU reference (8 images at 384, 4 at each other size) short.
prepared b16d
step engine-b16-dyn 120 gpu "$CLI build-engine $B16D --max-batch 8 --out $B16D-trt --force --json \
> $OUT/results/engine-b16-dyn.json"
step compare-b16-dyn 60 gpu "$CLI compare $B16D-trt --sizes 224,384,320x448 --batch-sizes 1,8 \
--max-images 8 --json > $OUT/results/compare-b16-dyn.json"

# --- 7. Triton tensorrt_plan smoke test ----------------------------------------------------------------
HAS_TRT_BACKEND=$("$PY" -c "from vit_deploy.doctor import probe_triton as p; print(int(p()['tensorrt_backend']))" \
  2>/dev/null || echo 0)
TRITON_CMD="$PY -m vit_deploy.cli triton-repo $B224-fp16-trt --backend tensorrt --name b16 --out $OUT/model_repository \
--force && ($PY -m vit_deploy.cli serve $OUT/model_repository --log $OUT/logs/tritonserver.log & echo \$! > $OUT/serve.pid) \
&& $PY -c 'import time, urllib.request as u
for _ in range(50):
    try: u.urlopen(\"http://127.0.0.1:8000/v2/health/ready\", timeout=1); break
    except Exception: time.sleep(1)' && $PY -m vit_deploy.cli triton-load $B224-fp16-trt --name b16 --clients 2 --requests 10; \
rc=\$?; kill \$(cat $OUT/serve.pid) 2>/dev/null; exit \$rc"
if [ "$HAS_TRT_BACKEND" != 1 ] && [ -z "$GPU_REASON" ]; then
  record triton skip 0 "no tritonserver with the tensorrt backend here (vit-deploy doctor says why)" "$TRITON_CMD"
else
  step triton 60 gpu "$TRITON_CMD"
fi

write_report
trap - INT TERM
rm -rf "$RUNNING"
echo "reports: $OUT/gpu-report.json $OUT/gpu-report.md ($(elapsed)s)"
