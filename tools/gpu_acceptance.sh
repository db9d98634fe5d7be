#!/usr/bin/env bash
# One command for the day a GPU host appears: everything only a GPU can prove, in under 8 minutes.
#
#   tools/gpu_acceptance.sh                 # on a GPU host, from the repository root
#   tools/gpu_acceptance.sh --dry-run       # anywhere: every GPU step skips with its reason
#   tools/gpu_acceptance.sh --skip-install  # the TensorRT/onnxruntime-gpu wheels are already installed
#   OUT=dir BUDGET=450 tools/gpu_acceptance.sh
#
# Steps, each time-boxed (its own limit, and never past the global BUDGET seconds), logged to
# OUT/logs/<step>.log, and run whatever happened before (a failure never stops the run):
#   install   pip install the TensorRT 11.4 wheels for this driver's CUDA and onnxruntime-gpu
#   doctor    vit-deploy doctor --json (what this machine can do, and why not)
#   prepare   CPU side, in the background from the start: FP32/FP16/INT8 graphs of ViT-B/16@384 and
#             of the real ViT-Ti/16 (../shared/realdata; INT8 calibrated on its ImageNet photos)
#   pytest    the GPU-marked tests (tests/steps/test_engine.py and the rest)
#   engines   FP32/FP16/INT8 engines of both models, each compared with PyTorch (ViT-Ti: real top-1)
#   dynamic   one engine of a --dynamic-res 224:512 ViT-B/16 export (profile 224..512, opt 384, batch 1..8),
#             validated at 5 sizes at build, then compared with PyTorch at 224, 384 and 320x448
#   bench     vit-deploy bench --device cuda on B/16@384 at batch 1/8/64
#   triton    a tensorrt_plan smoke test, when a tritonserver with the tensorrt backend is present
# OUT/gpu-report.json and OUT/gpu-report.md are written at the end, also after a failure or Ctrl-C.
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
trap 'record interrupted fail 0 "interrupted" ""; write_report; exit 130' INT TERM

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
  timeout --kill-after=10 "$limit" bash -c "$cmd" >> "$log" 2>&1
  rc=$?
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
B16="$ART/b16-384"
TI="$ART/ti16-224"
TI_WEIGHTS="$REALDATA/vit-ti16-augreg/model.safetensors"
PHOTOS="$REALDATA/imagenet-dev-500"
# CUDA_VISIBLE_DEVICES= keeps these CPU-only: build-engine then stops with exit 3 after writing and
# validating the FP16/INT8 graph, and the engines are built in step 5, one at a time on the GPU.
PREP_B16="export CUDA_VISIBLE_DEVICES=; $PY -m vit_deploy.cli export --model b16 --res 384 --out $B16 --force && \
$PY -m vit_deploy.cli build-engine $B16 --fp16 --out $B16-fp16 --force; \
$PY -m vit_deploy.cli build-engine $B16 --int8 --calib calibration/photos.txt --calib-count 32 \
--out $B16-int8 --force; true"
PREP_TI="export CUDA_VISIBLE_DEVICES=; $PY -m vit_deploy.cli export --model ti16 --res 224 --weights $TI_WEIGHTS --out $TI --force && \
$PY -m vit_deploy.cli build-engine $TI --fp16 --out $TI-fp16 --force; \
$PY -m vit_deploy.cli build-engine $TI --int8 --calib $PHOTOS --calib-count 256 --out $TI-int8 --force; true"
B16D="$ART/b16-384-dyn"
PREP_B16D="export CUDA_VISIBLE_DEVICES=; $PY -m vit_deploy.cli export --model b16 --res 384 --dynamic-res 224:512 \
--out $B16D --force"
PREP_PIDS=""
if [ "$DRY_RUN" = 1 ]; then
  record prepare-b16 skip 0 "dry run: CPU preparation runs on the GPU host" "$PREP_B16"
  record prepare-ti16 skip 0 "dry run: CPU preparation runs on the GPU host" "$PREP_TI"
  record prepare-b16-dyn skip 0 "dry run: CPU preparation runs on the GPU host" "$PREP_B16D"
else
  step prepare-b16 400 any "$PREP_B16" & PREP_PIDS="$PREP_PIDS $!"
  step prepare-b16-dyn 300 any "$PREP_B16D" & PREP_PIDS="$PREP_PIDS $!"
  if [ -f "$TI_WEIGHTS" ] && [ -d "$PHOTOS" ]; then
    step prepare-ti16 400 any "$PREP_TI" & PREP_PIDS="$PREP_PIDS $!"
  else
    record prepare-ti16 skip 0 "no real ViT-Ti at $TI_WEIGHTS or photos at $PHOTOS (set REALDATA)" "$PREP_TI"
  fi
fi

# --- 4. the GPU-marked tests -----------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  step pytest-collect 60 any "$PY -m pytest -m gpu --collect-only -q -p no:cacheprovider"
fi
step pytest-gpu 150 gpu "$PY -m pytest -m gpu -rs -q -p no:cacheprovider --junitxml=$OUT/results/pytest-gpu.xml"

# --- 5. engines, each compared with PyTorch ----------------------------------------------------------
for pid in $PREP_PIDS; do wait "$pid"; done
for model in ti16 b16; do
  if [ "$model" = ti16 ]; then base=$TI; images="--images $PHOTOS --max-images 200"; else base=$B16; images=""; fi
  for precision in fp32 fp16 int8; do
    graph=$base; [ "$precision" != fp32 ] && graph="$base-$precision"
    step "engine-$model-$precision" 90 gpu \
      "$PY -m vit_deploy.cli build-engine $graph --out $graph-trt --force --json \
> $OUT/results/engine-$model-$precision.json"
    step "compare-$model-$precision" 45 gpu \
      "$PY -m vit_deploy.cli compare $graph-trt $images --batch-sizes 1,8 --json > $OUT/results/compare-$model-$precision.json"
  done
done

# --- 5b. one dynamic-resolution engine: parity at three sizes ------------------------------------------
# FP32, so TensorRT's cubic Resize of the position embeddings is held to the export's 1e-5 (TF32 is off);
# max batch 8 keeps the build and the CPU reference (8 images at 384, 4 at each other size) short.
step engine-b16-dyn 120 gpu "$PY -m vit_deploy.cli build-engine $B16D --max-batch 8 --out $B16D-trt --force --json \
> $OUT/results/engine-b16-dyn.json"
step compare-b16-dyn 60 gpu "$PY -m vit_deploy.cli compare $B16D-trt --sizes 224,384,320x448 --batch-sizes 1,8 \
--max-images 8 --json > $OUT/results/compare-b16-dyn.json"

# --- 6. bench on B/16@384 ----------------------------------------------------------------------------
step bench-b16 120 gpu "$PY -m vit_deploy.cli bench $B16 --device cuda --batch-sizes 1,8,64 --repeats 3 \
--out $OUT/bench --json > $OUT/results/bench.json"

# --- 7. Triton tensorrt_plan smoke test ----------------------------------------------------------------
HAS_TRT_BACKEND=$("$PY" -c "from vit_deploy.doctor import probe_triton as p; print(int(p()['tensorrt_backend']))" \
  2>/dev/null || echo 0)
TRITON_CMD="$PY -m vit_deploy.cli triton-repo $B16-fp16-trt --backend tensorrt --name b16 --out $OUT/model_repository \
--force && ($PY -m vit_deploy.cli serve $OUT/model_repository --log $OUT/logs/tritonserver.log & echo \$! > $OUT/serve.pid) \
&& $PY -c 'import time, urllib.request as u
for _ in range(50):
    try: u.urlopen(\"http://127.0.0.1:8000/v2/health/ready\", timeout=1); break
    except Exception: time.sleep(1)' && $PY -m vit_deploy.cli triton-load $B16-fp16-trt --name b16 --clients 2 --requests 10; \
rc=\$?; kill \$(cat $OUT/serve.pid) 2>/dev/null; exit \$rc"
if [ "$HAS_TRT_BACKEND" != 1 ] && [ -z "$GPU_REASON" ]; then
  record triton skip 0 "no tritonserver with the tensorrt backend here (vit-deploy doctor says why)" "$TRITON_CMD"
else
  step triton 60 gpu "$TRITON_CMD"
fi

write_report
trap - INT TERM
echo "reports: $OUT/gpu-report.json $OUT/gpu-report.md ($(elapsed)s)"
