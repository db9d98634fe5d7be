"""Quantizers on a real, trained ViT-Ti/16 and real ImageNet photos: ours, NNCF, ModelOpt (INT8 and FP8).

The protocol (issues 10 and 18), the same for every row so the rows compare:
- model: ``REALDATA/vit-ti16-augreg/model.safetensors`` exported once with
  ``vit-deploy export --model ti16 --res 224 --weights ... --crop-pct 0.9`` (FP32 ONNX + manifest):
  the preprocessing this model was trained with (bicubic resize of the shorter side to 248, center
  crop 224, mean = std = 0.5; realdata/README.md). ``--crop-pct 0.875`` (resize 256) repeats the earlier
  studies' export, to read what the preprocessing changes. A --work folder holding an export with another
  resize is refused (start it anew with --fresh).
- photos, ``--protocol heldout`` (the default): calibration = the 256 photos of
  ``REALDATA/imagenet-dev-500`` that ``vit-deploy build-engine --calib <that folder> --calib-count 256
  --seed 0`` samples (``vit_deploy.images.sets.load_image_set(folder, count=256, seed=0)``; the files
  are listed in results.json and ``calib.txt``); evaluation = all 1,008 ``REALDATA/imagenet-val-dev``
  photos (ImageNet validation) + the 244 imagenet-dev-500 photos outside that sample: 1,252 photos
  that no calibration touched. Scores are given overall and per source (acuity / imagenette /
  imagewoof / dev-500: the validation set is not class-balanced, see realdata/README.md).
  ``--protocol halves`` (issue 10): imagenet-dev-500's data rows of labels.csv in file order, even
  row indices calibrate (250), odd ones score (250); ``--calibrate-on odd`` swaps them, ``--split-seed``
  shuffles the rows first (see below). Every set is read with ``load_image_set`` and the manifest's
  preprocessing, and every quantizer gets the same arrays;
- calibration: all calibration images, seed 0, batch 8 where the quantizer batches (NNCF takes one
  image per item, as its examples do; its ``subset_size`` is the calibration count);
- scoring: every graph against the FP32 ONNX graph on the evaluation photos, ONNX graphs on ONNX
  Runtime's CPU provider with Q/DQ as written (``session.disable_quant_qdq``: DequantizeLinear, then the
  float op, the arithmetic TensorRT does; ORT's fused integer kernels saturate on a CPU without
  VNNI/AMX; ``--fused-qdq`` scores with them), OpenVINO IR on OpenVINO CPU with ``INFERENCE_PRECISION_HINT=f32``
  (on a CPU with AMX or AVX-512 BF16, OpenVINO's default would also run the float parts in bf16; one
  extra row per IR shows that default, and results.json's ``cpu`` says which this was): top-1 accuracy,
  drop vs FP32 in points, top-1 agreement with FP32, mean and worst per-image cosine of the logits;
- placement: Q/DQ (or FakeQuantize / FakeConvert) nodes, how many of the 50 weight ops (qkv, proj, fc1,
  fc2 x 12, head, patch embedding) have INT8 or FP8 on both inputs (and which type), which attention
  MatMuls do, whether every zero point is 0 (TensorRT reads Q/DQ with zero point 0 only), the ops
  added besides Q/DQ (NNCF's SmoothQuant Mul nodes), and the FP32 compute ops a strongly typed
  TensorRT would run (``fp32_compute_ops``: from the graph alone, by ONNX shape inference).

Rows (``--variants`` picks some; ``ours`` rows are one line each in VARIANTS: their settings are
keyword arguments of our quantize function, ``budget`` aside):
  fp32, fp16                the export itself, and vit_deploy.onnx.fp16.convert_fp16 of it (build-engine --fp16)
  ours, ours-cpu            vit_deploy.onnx.int8.quantize_int8 as build-engine --int8 calls it, tensorrt / cpu
  ours-all-int8, ours-nosq  the same without the accuracy-budget fallback, and also without SmoothQuant
  nncf-onnx                 nncf.quantize(onnx model, model_type=TRANSFORMER), default (mixed) preset
  nncf-onnx-performance     the same, preset=PERFORMANCE (symmetric activations)
  nncf-onnx-performance-nosq  the same, SmoothQuant off (smooth_quant_alphas.matmul = -1)
  nncf-openvino             OpenVINO IR of the export + nncf.quantize(model_type=TRANSFORMER)
  nncf-openvino-fp8         the same with mode=QuantizationMode.FP8_E4M3 (FakeConvert nodes)
  modelopt-int8             ModelOpt 0.47 quantize(quantize_mode="int8"), its defaults
                            (entropy, its own TensorRT placement); high_precision_dtype fp32
  modelopt-int8-matmul      the same with op_types MatMul Gemm Conv
  modelopt-int8-fp16-noadd  int8, its defaults but Add excluded (op_types_to_exclude), float parts FP16
                            (high_precision_dtype fp16, its default); -max: the same, max calibration
  modelopt-fp8              quantize_mode="fp8", max calibration, float parts FP16 (its default); its
                            fp8 path is its int8 path with scales * 448/127, right for max only
  modelopt-fp8-entropy      the same with its API's default calibration for fp8 too, entropy
ModelOpt 0.47's ONNX path has no ``int8_sq`` (its modes are int8, fp8, int4; SmoothQuant is in
its PyTorch path only), so there is no such row.

Each quantizer runs in a fresh interpreter. Ours and NNCF in the project's environment (this
interpreter; NNCF: ``pip install nncf``, rows skipped with the reason when missing); ModelOpt
in its own virtualenv, given with ``--modelopt-python`` (recipe in tools/modelopt_quantize.py),
skipped when not given:

    PYTHONPATH=. python tools/compare_quantizers_real.py --realdata ../shared/realdata \\
        --modelopt-python /work/movenv/bin/python --work /tmp/quantcmp-heldout

``--protocol halves --calibrate-on odd`` swaps the halves (into another --work): scoring both ways
scores all 500 photos, each by graphs that no calibration of its own half touched. ``--split-seed N``
shuffles the rows by N before the even/odd split (a random half and its complement), and
``--pool WORK ...`` prints one table over finished folds (each photo scored once), so that a
repeated two-fold cross-validation reads a drop and an agreement on many more photos than one half:

    for seed in 1 2; do for half in even odd; do
      python tools/compare_quantizers_real.py --protocol halves --split-seed $seed --calibrate-on $half \\
          --work /tmp/cv-$seed-$half
    done; done
    python tools/compare_quantizers_real.py --pool /tmp/cv-1-even /tmp/cv-1-odd   # one seed: all 500 photos

Every drop and agreement comes with its 95% bootstrap interval (photos resampled, each photo's FP32
and quantized results together; ``vit_deploy.parity.metrics.intervals``).

Results: a markdown table on stdout and ``results.md`` / ``results.json`` in --work (the export
and the image arrays are kept there and reused; --reuse also keeps the quantized graphs, and
--reuse --redo ours ours-cpu quantizes our rows anew beside the peers' kept graphs; --fresh
starts over). Times on 2 shared cores are in results.md (quant s, eval s per row).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import re
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
RESULT = "RESULT-JSON "
WEIGHTS = "vit-ti16-augreg/model.safetensors"
PHOTOS = "imagenet-dev-500"
VALIDATION = "imagenet-val-dev"
CROP_PCT = 0.9  # the ViT-Ti augreg's own preprocessing: resize 248, crop 224 (realdata/README.md)
CALIB_COUNT = 256  # held-out protocol: build-engine --calib imagenet-dev-500 --calib-count 256 --seed 0
BATCH = 8
SEED = 0
# ONNX Runtime's session option that keeps Q/DQ as written (DequantizeLinear, then the float op) instead of
# fusing them into integer kernels: on a CPU without VNNI/AMX (an AVX2-only AMD EPYC here) those kernels
# saturate 16-bit multiply-adds, an error of this CPU that TensorRT's INT8 GEMMs do not have
EXACT_QDQ = "session.disable_quant_qdq"
REFERENCE = "@fp32-reference"  # the evaluation's key of the FP32 graph every row is scored against

# name -> (worker, settings, interpreter: "main" or "modelopt", description).
# "ours" settings are keyword arguments of our quantize function (``_our_quantizer``: issue 18's
# vit_deploy.onnx.quantize.quantize where this checkout has it, e.g. {"precision": "fp8",
# "quantize_attention": True}; else vit_deploy.onnx.int8.quantize_int8), except "budget": True, which
# passes build-engine's budget for the row's precision, and "function": "module:name", another function.
VARIANTS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "fp32": ("float", {"precision": "fp32"}, "main", "FP32 export (the reference itself)"),
    "fp16": ("float", {"precision": "fp16"}, "main", "FP16 graph, vit_deploy.onnx.fp16.convert_fp16 (--fp16)"),
    "ours": ("ours", {"target": "tensorrt", "budget": True}, "main",
             "vit-deploy, build-engine --int8 defaults (with the accuracy-budget fallback)"),
    "ours-cpu": ("ours", {"target": "cpu", "budget": True}, "main", "vit-deploy, the same with --target cpu"),
    "ours-all-int8": ("ours", {"target": "tensorrt"}, "main", "vit-deploy, every weight layer INT8 (no fallback)"),
    "ours-nosq": ("ours", {"target": "tensorrt", "smooth": False}, "main", "vit-deploy, SmoothQuant off, no fallback"),
    "nncf-onnx": ("nncf_onnx", {"preset": None, "smooth_quant": True}, "main",
                  "NNCF ONNX, TRANSFORMER, default preset (mixed)"),
    "nncf-onnx-performance": ("nncf_onnx", {"preset": "PERFORMANCE", "smooth_quant": True}, "main",
                              "NNCF ONNX, TRANSFORMER, preset PERFORMANCE"),
    "nncf-onnx-performance-nosq": ("nncf_onnx", {"preset": "PERFORMANCE", "smooth_quant": False}, "main",
                                   "NNCF ONNX, TRANSFORMER, PERFORMANCE, SmoothQuant off"),
    "nncf-openvino": ("nncf_openvino", {}, "main", "OpenVINO IR + NNCF, TRANSFORMER"),
    "nncf-openvino-fp8": ("nncf_openvino", {"mode": "FP8_E4M3"}, "main",
                          "OpenVINO IR + NNCF, TRANSFORMER, mode FP8_E4M3"),
    "modelopt-int8": ("modelopt", {"op_types": None}, "modelopt", "ModelOpt int8, defaults (entropy), FP32 floats"),
    "modelopt-int8-matmul": ("modelopt", {"op_types": ["MatMul", "Gemm", "Conv"]}, "modelopt",
                             "ModelOpt int8, op_types MatMul Gemm Conv (entropy), FP32 floats"),
    "modelopt-int8-fp16-noadd": ("modelopt", {"op_types_to_exclude": ["Add"], "high_precision_dtype": "fp16"},
                                 "modelopt", "ModelOpt int8, defaults (entropy) but Add excluded, FP16 floats"),
    "modelopt-int8-fp16-noadd-max": ("modelopt", {"op_types_to_exclude": ["Add"], "high_precision_dtype": "fp16",
                                                 "method": "max"}, "modelopt",
                                     "ModelOpt int8, max calibration, Add excluded, FP16 floats"),
    "modelopt-fp8": ("modelopt", {"mode": "fp8", "method": "max", "high_precision_dtype": "fp16"}, "modelopt",
                     "ModelOpt fp8, max calibration (its fp8 docstring and NVIDIA's ViT recipe), FP16 floats"),
    "modelopt-fp8-entropy": ("modelopt", {"mode": "fp8", "high_precision_dtype": "fp16"}, "modelopt",
                             "ModelOpt fp8, its API defaults (entropy calibration), FP16 floats"),
}
WEIGHT_ROLES = ("patch_embed", "qkv", "proj", "fc1", "fc2", "head")  # patch_embed first: its Conv is .../proj
# ops a DQ may sit behind and still feed a GEMM with INT8 (data movement only: TensorRT moves Q/DQ across them)
LAYOUT_OPS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gather", "Slice", "Split"}
# compute ops that a strongly typed TensorRT runs in the type of their output (issue 18's count)
COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "Add", "Mul", "Div", "Sub", "Softmax", "Erf", "Pow", "Sqrt", "Tanh",
               "Sigmoid", "ReduceMean")


# ---------------------------------------------------------------------------------------------
# workers: each runs in a fresh interpreter and prints one RESULT line


def _our_quantizer(precision: str) -> tuple[Any, Any]:
    """This checkout's quantize function and build-engine's budget for ``precision`` (a pretrained model,
    the CLI's defaults): ``vit_deploy.onnx.quantize.quantize`` (INT8 and FP8, issue 18) where it exists,
    else ``vit_deploy.onnx.int8.quantize_int8`` (INT8 only)."""
    from vit_deploy.steps import precision as steps

    defaults = steps.PrecisionOptions(precision)
    try:
        from vit_deploy.onnx.quantize import quantize
    except ImportError:
        from vit_deploy.onnx.int8 import quantize_int8 as quantize

        return quantize, lambda: steps.int8_budget(defaults.accuracy_budget, defaults.max_float_layers, True)
    return quantize, lambda: steps.quantization_budget(defaults.accuracy_budget, defaults.max_float_layers, True,
                                                       precision, defaults.budget_cosine)


def _worker_ours(a: dict[str, Any]) -> dict[str, Any]:
    """Our quantizer: the row's settings are its keyword arguments, but ``budget: True`` = build-engine's
    budget, and ``function: "module:name"`` names another quantize function."""
    import importlib
    import inspect

    calib = np.load(a["calib"])
    kwargs = dict(a["settings"])
    quantize, budget = _our_quantizer(kwargs.get("precision", "int8"))
    if "function" in kwargs:
        module, _, name = kwargs.pop("function").partition(":")
        quantize = getattr(importlib.import_module(module), name)
    if kwargs.pop("budget", False):
        kwargs["budget"] = budget()
    if "head_size" in inspect.signature(quantize).parameters:  # where TensorRT can fuse attention (issue 18)
        kwargs.setdefault("head_size", a["head_size"])
    t0 = time.perf_counter()
    policy = quantize(Path(a["fp32"]), Path(a["out"]), calib, num_tokens=a["num_tokens"], batch=a["batch"], **kwargs)
    return {"seconds": time.perf_counter() - t0, "settings": policy}


def _worker_float(a: dict[str, Any]) -> dict[str, Any]:
    """The FP32 export itself (copied), or its FP16 graph as build-engine --fp16 makes it."""
    import shutil

    import onnx

    from vit_deploy.onnx.fp16 import DEFAULT_KEEP_FP32, convert_fp16, fp16_policy
    from vit_deploy.onnx.graph import save_model

    t0 = time.perf_counter()
    if a["settings"]["precision"] == "fp32":
        shutil.copyfile(a["fp32"], a["out"])
        settings: dict[str, Any] = {"precision": "fp32"}
    else:
        save_model(convert_fp16(onnx.load(a["fp32"])), Path(a["out"]))
        settings = {"precision": "fp16", **fp16_policy(DEFAULT_KEEP_FP32)}
    return {"seconds": time.perf_counter() - t0, "settings": settings}


def _nncf_dataset(calib: np.ndarray, input_name: str | int) -> Any:
    import nncf

    return nncf.Dataset([{input_name: calib[i:i + 1]} for i in range(len(calib))])


def _worker_nncf_onnx(a: dict[str, Any]) -> dict[str, Any]:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    calib = np.load(a["calib"])
    s = a["settings"]
    model = onnx.load(a["fp32"])
    kwargs: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER, "subset_size": len(calib)}
    if s["preset"]:
        kwargs["preset"] = getattr(nncf.QuantizationPreset, s["preset"])
    if not s["smooth_quant"]:
        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    t0 = time.perf_counter()
    quantized = nncf.quantize(model, _nncf_dataset(calib, model.graph.input[0].name), **kwargs)
    seconds = time.perf_counter() - t0
    onnx.save(quantized, a["out"])
    return {"seconds": seconds, "settings": {
        "quantizer": f"nncf {nncf.__version__} (ONNX backend)", "model_type": "TRANSFORMER",
        "preset": s["preset"] or "default (MIXED for TRANSFORMER)", "smooth_quant": s["smooth_quant"],
        "subset_size": len(calib), "items": "one image per item"}}


def _worker_nncf_openvino(a: dict[str, Any]) -> dict[str, Any]:
    import nncf
    import openvino as ov

    calib = np.load(a["calib"])
    mode = a["settings"].get("mode")  # None: INT8; "FP8_E4M3": FakeConvert to f8e4m3
    kwargs: dict[str, Any] = {"mode": getattr(nncf.QuantizationMode, mode)} if mode else {}
    model = ov.Core().read_model(a["fp32"])
    t0 = time.perf_counter()
    quantized = nncf.quantize(model, _nncf_dataset(calib, 0), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calib), **kwargs)
    seconds = time.perf_counter() - t0
    ov.save_model(quantized, a["out"], compress_to_fp16=False)
    return {"seconds": seconds, "settings": {
        "quantizer": f"nncf {nncf.__version__} on OpenVINO {ov.__version__} IR", "model_type": "TRANSFORMER",
        "mode": mode or "default (INT8)", "preset": "default (MIXED for TRANSFORMER)", "subset_size": len(calib),
        "items": "one image per item"}}


def _worker_modelopt(a: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(TOOLS))
    from modelopt_quantize import quantize_with_modelopt

    calib = np.load(a["calib"])
    s = a["settings"]
    # entropy is ModelOpt's default calibration for int8 and fp8 alike; nothing excluded (197 tokens <= 512)
    settings = quantize_with_modelopt(Path(a["fp32"]), Path(a["out"]), calib, s.get("method", "entropy"), [],
                                      batch=a["batch"], op_types=s.get("op_types"),
                                      op_types_to_exclude=s.get("op_types_to_exclude"),
                                      quantize_mode=s.get("mode", "int8"),
                                      high_precision_dtype=s.get("high_precision_dtype", "fp32"))
    return {"seconds": settings["seconds"], "settings": settings}


def _worker_evaluate(a: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    images = np.load(a["images"])
    labels = np.load(a["labels"])
    batch = a["batch"]

    def run_ort(path: str, exact_qdq: bool = False) -> np.ndarray:
        options = ort.SessionOptions()
        if exact_qdq:  # Q/DQ as written, the arithmetic TensorRT does (see EXACT_QDQ)
            options.add_session_config_entry(EXACT_QDQ, "1")
        s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {s.get_inputs()[0].name: images[i:i + batch]})[0]
                               for i in range(0, len(images), batch)])

    def run_ov(path: str, hint: str | None) -> np.ndarray:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
        compiled = ov.Core().compile_model(path, "CPU", config)
        return np.concatenate([compiled(images[i:i + batch])[0] for i in range(0, len(images), batch)])

    cached = Path(a["reference_logits"])
    ref = np.load(cached) if cached.is_file() else run_ort(a["fp32"])
    np.save(cached, ref)
    fp32_bytes = Path(a["fp32"]).read_bytes()
    results: dict[str, Any] = {REFERENCE: {"accuracy": float(np.mean(ref.argmax(-1) == labels))}}
    versions = {"onnxruntime": ort.__version__}
    with contextlib.suppress(PackageNotFoundError):
        versions["openvino"] = version("openvino")
    for key, (path, hint) in a["candidates"].items():
        t0 = time.perf_counter()
        try:
            if Path(path).read_bytes() == fp32_bytes:  # the FP32 row: its logits are the reference's
                logits = ref
            else:
                logits = run_ov(path, hint) if path.endswith(".xml") else run_ort(path, hint == "exact-qdq")
        except Exception as e:  # a graph the runtime cannot run is a result too
            results[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        results[key] = {**_metrics(ref, logits, labels), "seconds": round(time.perf_counter() - t0, 1)}
        if key in a.get("cache_files", {}):  # kept as each graph finishes: an interrupted run loses only the rest
            Path(a["cache_files"][key]).write_text(json.dumps(results[key]))
    return {"results": results, "versions": versions}


def _metrics(ref: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    r, c = ref.astype(np.float64), logits.astype(np.float64)
    cos = np.sum(r * c, -1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(c, axis=-1))
    per_image = {"ref_correct": (r.argmax(-1) == labels).astype(int).tolist(),
                 "correct": (c.argmax(-1) == labels).astype(int).tolist(),
                 "agree": (r.argmax(-1) == c.argmax(-1)).astype(int).tolist(), "cosine": cos.tolist()}
    return {**summary(per_image), "rel_l2": float(np.linalg.norm(c - r) / np.linalg.norm(r)), "per_image": per_image}


def summary(per_image: dict[str, list[float]]) -> dict[str, Any]:
    """Accuracy, drop, agreement and cosines of per-photo records, with 95% bootstrap intervals of the
    drop and the agreement (``vit_deploy.parity.metrics.intervals``: a photo is 0.4 point of 250)."""
    from vit_deploy.parity.metrics import intervals

    ref, got = np.asarray(per_image["ref_correct"]), np.asarray(per_image["correct"])
    agree, cos = np.asarray(per_image["agree"]), np.asarray(per_image["cosine"])
    ci = intervals(ref, got, agree)
    return {
        "images": len(ref),
        "reference_accuracy": float(ref.mean()),
        "accuracy": float(got.mean()),
        "drop_points": float(100 * (ref.mean() - got.mean())),
        "drop_points_ci95": [ci["accuracy_drop_ci95_low"], ci["accuracy_drop_ci95_high"]],
        "top1_agreement": float(agree.mean()),
        "top1_agreement_ci95": [ci["top1_agreement_ci95_low"], ci["top1_agreement_ci95_high"]],
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
    }


WORKERS = {"ours": _worker_ours, "float": _worker_float, "nncf_onnx": _worker_nncf_onnx,
           "nncf_openvino": _worker_nncf_openvino, "modelopt": _worker_modelopt, "evaluate": _worker_evaluate}


def _call(python: str, worker: str, args: dict[str, Any], log: Path, timeout: int = 3600) -> dict[str, Any]:
    """Run a worker in a fresh interpreter; its RESULT line, or {"error": ...}."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", worker, "--worker-args", json.dumps(args)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT):
            out = json.loads(line[len(RESULT):])
            out["process_seconds"] = round(time.perf_counter() - t0, 1)
            return out
    tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
    return {"error": f"exit {p.returncode}: {tail[0][:400]}", "log": str(log)}


# ---------------------------------------------------------------------------------------------
# placement facts


def _role(name: str) -> str | None:
    for role in WEIGHT_ROLES:
        if re.search(rf"(^|[/._]){role}([/._]|$)", name):
            return role
    return None


def tensor_types(model: Any) -> dict[str, int]:
    """The element type (onnx.TensorProto enum) of every tensor of ``model``, by ONNX shape inference."""
    import onnx

    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    types.update({o: n.attribute[0].t.data_type for n in g.node if n.op_type == "Constant" and n.attribute
                  and n.attribute[0].type == onnx.AttributeProto.TENSOR for o in n.output})
    return types


def fp32_compute_ops(model: Any, types: dict[str, int] | None = None) -> dict[str, Any]:
    """The compute ops a strongly typed TensorRT would run in FP32, read from the graph alone: nodes of
    COMPUTE_OPS whose output is FLOAT (types by ONNX shape inference; a GEMM fed by DQ with an FP32
    output counts too: TensorRT writes and accumulates its float side in FP32). LayerNormalization is
    counted apart (our FP16 policy keeps it FP32). ``untyped``: outputs shape inference left unknown.
    A stand-in until the product's TensorRT-readiness report (issue 18) can say the same."""
    from onnx import TensorProto

    types = tensor_types(model) if types is None else types
    fp32: Counter[str] = Counter()
    layernorm = untyped = 0
    for n in model.graph.node:
        t = types.get(n.output[0], TensorProto.UNDEFINED)
        if n.op_type == "LayerNormalization":
            layernorm += int(t == TensorProto.FLOAT)
        elif n.op_type in COMPUTE_OPS:
            untyped += int(t == TensorProto.UNDEFINED)
            fp32[n.op_type] += int(t == TensorProto.FLOAT)
    fp32 = +fp32  # drops the zero counts
    return {"total": sum(fp32.values()), "by_op": dict(fp32.most_common()), "layernorm": layernorm,
            "untyped": untyped}


def onnx_placement(path: Path, fp32: Any) -> dict[str, Any]:
    """Q/DQ counts, zero points, weight ops and attention MatMuls with INT8/FP8 inputs, ops added, FP32 ops."""
    import onnx
    from onnx import numpy_helper

    from vit_deploy.onnx.qdq import activation_matmuls  # the attention MatMuls (both inputs activations)

    model = onnx.load(str(path), load_external_data=False)
    types = tensor_types(model)
    nodes = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    values = {t.name: t for t in model.graph.initializer}
    values.update({o: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant" and n.attribute
                   for o in n.output})

    def quantized_type(name: str) -> str | None:
        """The type a DequantizeLinear reads ("int8", "float8e4m3fn", ...) when ``name`` comes from one,
        perhaps through layout-only ops; else None."""
        seen = 0
        while name in producer and seen < 8:
            node = producer[name]
            if node.op_type == "DequantizeLinear":
                return onnx.TensorProto.DataType.Name(types.get(node.input[0], 0)).lower()
            if node.op_type not in LAYOUT_OPS:
                return None
            name, seen = node.input[0], seen + 1
        return None

    def both_quantized(node: Any) -> str | None:  # the type when both inputs come from DQ
        kinds = {quantized_type(i) for i in node.input[:2]}
        return None if None in kinds else "+".join(sorted(kinds))

    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    zp_types, nonzero, nonzero_q = Counter(), 0, 0
    for n in q + dq:
        if len(n.input) > 2 and n.input[2] in values:
            z = numpy_helper.to_array(values[n.input[2]])
            zp_types[str(z.dtype)] += 1
            nonzero += int(np.any(z.astype(np.float32) != 0))
            nonzero_q += int(n.op_type == "QuantizeLinear" and np.any(z.astype(np.float32) != 0))
        else:
            zp_types["none (int8)" if n.op_type == "QuantizeLinear" else "none"] += 1
    weight_ops = [n for n in fp32.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and _role(n.name)]
    by_role: dict[str, list[int]] = {r: [0, 0] for r in WEIGHT_ROLES}
    weight_types: Counter[str] = Counter()
    for n in weight_ops:
        by_role[_role(n.name)][1] += 1
        kind = both_quantized(nodes[n.name]) if n.name in nodes else None
        if kind:
            by_role[_role(n.name)][0] += 1
            weight_types[kind] += 1
    attention = [n.name for n in activation_matmuls(fp32)]
    att_q = {name: both_quantized(nodes[name]) for name in attention if name in nodes}
    att_q = {name: kind for name, kind in att_q.items() if kind}
    feeds = Counter(n.op_type for n in model.graph.node for i in n.input
                    if i in producer and producer[i].op_type == "DequantizeLinear"
                    and n.op_type not in ("MatMul", "Gemm", "Conv", "QuantizeLinear"))
    before = Counter(n.op_type for n in fp32.graph.node)
    after = Counter(n.op_type for n in model.graph.node)
    added = {k: v for k, v in (after - before).items() if k not in ("QuantizeLinear", "DequantizeLinear")}
    return {
        "format": "onnx q/dq",
        "quantize_linear": len(q), "dequantize_linear": len(dq),
        "zero_point_types": dict(zp_types), "nonzero_zero_points": nonzero, "nonzero_zero_point_q": nonzero_q,
        "zero_points_0_signed": nonzero == 0 and set(zp_types) <= {"int8", "float8_e4m3fn", "none (int8)", "none"},
        "weight_ops_quantized": sum(v[0] for v in by_role.values()), "weight_ops": len(weight_ops),
        "weight_ops_types": dict(weight_types),
        "weight_ops_by_role": {r: f"{a}/{b}" for r, (a, b) in by_role.items()},
        "attention_quantized": f"{len(att_q)}/{len(attention)}",
        "attention_quantized_which": sorted({re.sub(r".*/attn/", "", n) for n in att_q}),
        "attention_types": dict(Counter(att_q.values())),
        "ops_added": added, "ops_removed": dict(before - after), "dq_also_feeds": dict(sorted(feeds.items())),
        "fp32_compute_ops": fp32_compute_ops(model, types),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
    }


def openvino_placement(path: Path) -> dict[str, Any]:
    """The same facts for an OpenVINO IR: FakeQuantize (INT8) or FakeConvert (FP8) nodes, quantized weights,
    ops feeding MatMul/Convolution."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    ops = model.get_ordered_ops()
    fq = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    fc = [op for op in ops if op.get_type_name() == "FakeConvert"]
    quantizers = {"FakeQuantize", "FakeConvert"}
    weight_chain = {"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze"}

    def source(port: Any) -> Any:
        return port.get_source_output().get_node()

    def int8_activation(node: Any) -> bool:
        for _ in range(8):
            t = node.get_type_name()
            if t in quantizers:
                return True
            if t not in {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather", "Slice", "Split", "VariadicSplit"}:
                return False
            node = source(node.input(0))
        return False

    def int8_weight(node: Any) -> bool:  # Constant(i8/u8) -> Convert -> [Subtract] -> Multiply (compressed)
        stack, seen = [node], 0
        while stack and seen < 16:
            n, seen = stack.pop(), seen + 1
            t = n.get_type_name()
            if t in quantizers:
                return True
            if t == "Constant" and n.get_output_element_type(0).get_type_name() in ("i8", "u8", "f8e4m3"):
                return True
            if t in weight_chain:
                stack += [source(i) for i in n.inputs()]
        return False

    by_role: dict[str, list[int]] = {r: [0, 0] for r in WEIGHT_ROLES}
    attention, attention_which = [0, 0], set()
    for op in ops:
        if op.get_type_name() not in ("MatMul", "Convolution"):
            continue
        a, b = source(op.input(0)), source(op.input(1))
        role = _role(op.get_friendly_name())
        if role:
            by_role[role][1] += 1
            by_role[role][0] += int(int8_activation(a) and int8_weight(b))
        elif "attn" in op.get_friendly_name():
            attention[1] += 1
            if int8_activation(a) and int8_activation(b):
                attention[0] += 1
                attention_which.add(re.sub(r".*/attn/", "", op.get_friendly_name()))
    levels = Counter(int(op.get_attributes().get("levels", 0)) for op in fq)
    asymmetric = activation_fq = 0
    for op in fq:
        if source(op.input(0)).get_type_name() == "Constant":
            continue  # a weight's
        activation_fq += 1
        low, high = (source(op.input(i)).get_data() for i in (1, 2))
        lo, hi = float(np.min(low)), float(np.max(high))
        # symmetric: unsigned [0, hi], or signed with the INT8 grid's -128/127 (or -127/127) bounds
        if not (lo == 0.0 or np.isclose(-lo, hi * 128 / 127, rtol=1e-4) or np.isclose(-lo, hi, rtol=1e-4)):
            asymmetric += 1
    sq = sum(1 for op in ops if op.get_type_name() == "Multiply"
             and op.get_friendly_name().endswith("nncf_smooth_quant"))
    return {
        "format": "openvino FakeQuantize",
        "fake_quantize": len(fq), "fake_quantize_levels": {str(k): v for k, v in levels.items()},
        "fake_convert": len(fc), "fake_convert_types": dict(Counter(
            str(op.get_attributes().get("destination_type")) for op in fc)),
        "weight_ops_quantized": sum(v[0] for v in by_role.values()),
        "weight_ops": sum(v[1] for v in by_role.values()),
        "weight_ops_by_role": {r: f"{a}/{b}" for r, (a, b) in by_role.items()},
        "attention_quantized": f"{attention[0]}/{attention[1]}", "attention_quantized_which": sorted(attention_which),
        "activation_fq": activation_fq, "asymmetric_activations": asymmetric,
        "ops_added": {"Multiply (SmoothQuant)": sq} if sq else {}, "zero_points_0_signed": None,
    }


# ---------------------------------------------------------------------------------------------
# driver


def split_photos(
    realdata: Path, work: Path, calibrate_on: str = "even", split_seed: int | None = None,
) -> tuple[Path, Path, list[int], list[int]]:
    """Definition files for the calibration half (the ``calibrate_on`` rows) and the evaluation half (the
    others), and their labels. With ``split_seed`` the rows are shuffled by that seed first, so that
    even/odd positions are a random half and its complement (repeated two-fold cross-validation)."""
    from vit_deploy.artifact import sha256_file

    folder = realdata / PHOTOS
    with (folder / "labels.csv").open(newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and not rows[0][-1].strip().isdigit():
        rows = rows[1:]
    if split_seed is not None:
        rows = [rows[i] for i in np.random.default_rng(split_seed).permutation(len(rows))]
    halves: dict[str, tuple[list[str], list[int]]] = {"calib": ([], []), "eval": ([], [])}
    for i, (name, label) in enumerate(rows):
        path = (folder / name).resolve()
        lines, labels = halves["calib" if i % 2 == (0 if calibrate_on == "even" else 1) else "eval"]
        lines.append(f"{sha256_file(path)}  {path}")
        labels.append(int(label))
    out = []
    for key, (lines, _) in halves.items():
        p = work / f"{key}.txt"
        p.write_text("\n".join(lines) + "\n")
        out.append(p)
    return out[0], out[1], halves["calib"][1], halves["eval"][1]


def heldout_photos(realdata: Path, work: Path, prep: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The held-out protocol's sets: calibration = the 256 imagenet-dev-500 photos that ``build-engine
    --calib <folder> --calib-count 256 --seed 0`` samples; evaluation = every imagenet-val-dev photo and
    the imagenet-dev-500 photos outside that sample. Arrays go to --work; returns (calibration, evaluation)
    records: files, labels, and for the evaluation each photo's source."""
    from vit_deploy.artifact import sha256_file
    from vit_deploy.images.sets import load_image_set, read_labels

    dev = realdata / PHOTOS
    calib = load_image_set(dev, prep, count=CALIB_COUNT, seed=SEED, role="calibration")  # build-engine's call
    picked = {Path(f).resolve() for f in calib.files}
    dev_labels = read_labels(dev)
    rest = [path for path in dev_labels if path not in picked]  # labels.csv order
    (work / "calib.txt").write_text("".join(f"{sha256_file(Path(f))}  {Path(f).resolve()}\n" for f in calib.files))
    rest_def = work / "eval-dev500.txt"
    rest_def.write_text("".join(f"{sha256_file(path)}  {path}\n" for path in rest))
    val = load_image_set(realdata / VALIDATION, prep, count=None, role="evaluation")
    others = load_image_set(rest_def, prep, count=None, role="evaluation")
    for name, got, want in (("calibration", calib, CALIB_COUNT), (VALIDATION, val, None), (PHOTOS, others, len(rest))):
        if got.skipped or (want is not None and len(got.files) != want):
            raise SystemExit(f"{name}: {len(got.skipped)} image(s) skipped: {got.skipped[:3]}")
    np.save(work / "calib.npy", calib.images)
    np.save(work / "eval.npy", np.concatenate([val.images, others.images]))
    labels = np.concatenate([val.labels, [dev_labels[Path(f).resolve()] for f in others.files]]).astype(np.int64)
    np.save(work / "eval_labels.npy", labels)
    names = [Path(f).name for f in val.files]
    return ({"images": len(calib.files), "digest": calib.digest, "source": str(dev),
             "sample": f"load_image_set(count={CALIB_COUNT}, seed={SEED})",
             "files": [Path(f).name for f in calib.files]},
            {"images": len(labels), "digest": hashlib.sha256(val.digest.encode() + others.digest.encode()).hexdigest(),
             "files": [f"{VALIDATION}/{n}" for n in names] + [f"{PHOTOS}/{Path(f).name}" for f in others.files],
             "sources": [n.split("__", 1)[0] for n in names] + ["dev-500"] * len(others.files)})


def halves_photos(
    realdata: Path, work: Path, prep: Any, calibrate_on: str, split_seed: int | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The halves protocol's sets (issue 10): the two halves of imagenet-dev-500 (``split_photos``)."""
    from vit_deploy.images.sets import load_image_set

    calib_def, eval_def, calib_labels, eval_labels = split_photos(realdata, work, calibrate_on, split_seed)
    sets = {}
    for key, spec, labels in (("calib", calib_def, calib_labels), ("eval", eval_def, eval_labels)):
        s = load_image_set(spec, prep, count=None, seed=SEED, role=key)
        if s.skipped or len(s.files) != len(labels):
            raise SystemExit(f"{spec}: {len(s.skipped)} image(s) skipped: {s.skipped[:3]}")
        np.save(work / f"{key}.npy", s.images)
        sets[key] = {"images": len(s.files), "digest": s.digest, "first": Path(s.files[0]).name}
    np.save(work / "eval_labels.npy", np.array(eval_labels, dtype=np.int64))
    sets["eval"]["files"] = [Path(line.split("  ", 1)[1]).name for line in eval_def.read_text().splitlines()]
    return sets["calib"], sets["eval"]


def export_real_model(
    realdata: Path, work: Path, log: Any, crop_pct: float = CROP_PCT,
) -> tuple[Path, dict[str, Any]]:
    """The real ViT-Ti exported once into --work with its own preprocessing (--crop-pct 0.9 unless asked)."""
    from vit_deploy.specs import resize_for_crop_pct

    art = work / "ti16-224"
    weights = realdata / WEIGHTS
    if not (art / "manifest.json").is_file():
        log(f"export {weights} -> {art}")
        cmd = [sys.executable, "-c", "import sys; from vit_deploy.cli import main; main(sys.argv[1:])", "export",
               "--model", "ti16", "--res", "224", "--weights", str(weights), "--crop-pct", str(crop_pct),
               "--out", str(art)]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        (work / "export.log").write_text(p.stdout + p.stderr)
        if p.returncode != 0:
            raise SystemExit(f"export failed ({' '.join(cmd)}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    manifest = json.loads((art / "manifest.json").read_text())
    want = resize_for_crop_pct(manifest["model"]["img_size"], crop_pct)
    if manifest["preprocessing"].get("resize") != want:
        raise SystemExit(f"{art} was exported with resize {manifest['preprocessing'].get('resize')}, not {want} "
                         f"(crop_pct {crop_pct}): rerun with --fresh, or another --work")
    return art / manifest["files"][0]["path"], manifest


def prepare(
    realdata: Path, work: Path, log: Any, protocol: str = "heldout", calibrate_on: str = "even",
    split_seed: int | None = None, crop_pct: float = CROP_PCT,
) -> dict[str, Any]:
    from vit_deploy.specs import Preprocessing

    fp32, manifest = export_real_model(realdata, work, log, crop_pct)
    prep = Preprocessing.from_dict(manifest["preprocessing"])
    m = manifest["model"]
    num_tokens = (m["img_size"] // m["patch_size"]) ** 2 + 1
    info: dict[str, Any] = {"fp32": str(fp32), "fp32_sha256": hashlib.sha256(fp32.read_bytes()).hexdigest(),
                            "num_tokens": num_tokens, "head_size": m["dim"] // m["heads"],
                            "preprocessing": prep.to_dict(), "weights": str(realdata / WEIGHTS), "protocol": protocol}
    if protocol == "heldout":
        calib, evaluation = heldout_photos(realdata, work, prep)
        counts = Counter(evaluation["sources"])
        info["protocol_text"] = (
            f"calibration: {calib['images']} photos of {PHOTOS} sampled as build-engine --calib-count {CALIB_COUNT} "
            f"--seed {SEED} does; evaluation: {evaluation['images']} photos no calibration touched ("
            + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"); batch {BATCH}")
        info["eval_sources"] = evaluation.pop("sources")
    else:
        calib, evaluation = halves_photos(realdata, work, prep, calibrate_on, split_seed)
        scored_on = "odd" if calibrate_on == "even" else "even"
        info["halves"] = {"calibration": calibrate_on, "evaluation": scored_on, "split_seed": split_seed}
        info["protocol_text"] = (f"calibration: {calibrate_on} data rows of {PHOTOS}/labels.csv ({calib['images']}), "
                                 f"evaluation: {scored_on} rows ({evaluation['images']}); split seed {split_seed}; "
                                 f"batch {BATCH}, seed {SEED}")
    info["eval_files"] = evaluation.pop("files")
    info["sets"] = {"calib": calib, "eval": evaluation}
    log(f"FP32 {fp32} ({num_tokens} tokens); preprocessing {prep.to_dict()}; {info['protocol_text']}")
    return info


def by_source(per_image: dict[str, list[float]], sources: list[str]) -> dict[str, Any]:
    """``summary`` of each source's photos (their per-photo records picked out), in order of first sight."""
    out = {}
    for source in dict.fromkeys(sources):
        idx = [i for i, s in enumerate(sources) if s == source]
        out[source] = summary({k: [v[i] for i in idx] for k, v in per_image.items()})
    return out


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    import importlib.util

    import onnx

    work = args.work
    info = prepare(args.realdata, work, log, args.protocol, args.calibrate_on or "even", args.split_seed,
                   args.crop_pct)
    fp32 = Path(info["fp32"])
    fp32_model = onnx.load(str(fp32), load_external_data=False)
    rows, candidates = [], {}
    for name in args.variants:
        worker, settings, interp, description = VARIANTS[name]
        row: dict[str, Any] = {"key": name, "description": description, "settings_asked": settings}
        rows.append(row)
        missing = {"nncf_onnx": "nncf", "nncf_openvino": "nncf"}.get(worker)
        if interp == "modelopt" and not args.modelopt_python:
            row["skipped"] = "no --modelopt-python (ModelOpt's virtualenv; recipe in tools/modelopt_quantize.py)"
        elif missing and importlib.util.find_spec(missing) is None:
            row["skipped"] = f"{missing} is not installed here (pip install {missing})"
        elif worker == "nncf_openvino" and importlib.util.find_spec("openvino") is None:
            row["skipped"] = "openvino is not installed here"
        if "skipped" in row:
            log(f"{name}: skipped: {row['skipped']}")
            continue
        out = work / (f"{name}.xml" if worker == "nncf_openvino" else f"{name}.onnx")
        if args.reuse and name not in args.redo and out.is_file() and (work / f"{name}.json").is_file():
            r = json.loads((work / f"{name}.json").read_text())
            log(f"{name}: reusing {out}")
        else:
            log(f"{name}: quantize ({description})")
            python = args.modelopt_python if interp == "modelopt" else sys.executable
            r = _call(python, worker, {"fp32": str(fp32), "out": str(out), "calib": str(work / "calib.npy"),
                                       "num_tokens": info["num_tokens"], "head_size": info["head_size"],
                                       "batch": BATCH, "settings": settings},
                      work / f"{name}.log")
            if "error" not in r:
                (work / f"{name}.json").write_text(json.dumps(r, indent=2, default=str))
        row.update(r)
        if "error" in r:
            log(f"{name}: FAILED: {r['error']}")
            continue
        log(f"{name}: {r['seconds']:.1f} s")
        row["placement"] = (openvino_placement(out) if out.suffix == ".xml" else onnx_placement(out, fp32_model))
        candidates[name] = (str(out), "f32" if out.suffix == ".xml" else None if args.fused_qdq else "exact-qdq")
        if out.suffix == ".xml":
            candidates[name + "@default-precision"] = (str(out), None)
    cache = work / "eval-cache"  # per graph file, runtime setting, FP32 graph and photos: --redo re-scores only
    cache.mkdir(exist_ok=True)       # the graphs that changed
    evaluation = {"results": {}, "versions": {}}
    keys = {name: _eval_key(path, hint, info) for name, (path, hint) in candidates.items()}
    for name, key in keys.items():
        if (cache / f"{key}.json").is_file():
            evaluation["results"][name] = json.loads((cache / f"{key}.json").read_text())
    todo = {name: c for name, c in candidates.items() if name not in evaluation["results"]}
    log(f"evaluate {len(todo)} graph(s) on {info['sets']['eval']['images']} photos "
        f"({len(candidates) - len(todo)} scored before: {cache})")
    ev = _call(sys.executable, "evaluate", {
        "fp32": str(fp32), "candidates": todo, "batch": BATCH, "images": str(work / "eval.npy"),
        "labels": str(work / "eval_labels.npy"), "reference_logits": str(cache / f"{_eval_key(fp32, None, info)}.npy"),
        "cache_files": {name: str(cache / f"{keys[name]}.json") for name in todo}}, work / "evaluate.log")
    if "error" in ev:
        raise SystemExit(f"evaluation failed: {ev['error']} (log: {work / 'evaluate.log'})")
    evaluation["results"].update(ev["results"])
    evaluation["versions"].update(ev["versions"])
    ev = evaluation
    sources = info.get("eval_sources")
    for row in rows:
        e = ev["results"].get(row["key"])
        if e:
            row["eval"] = e
            if sources and "per_image" in e:
                e["by_source"] = by_source(e["per_image"], sources)
        extra = ev["results"].get(row["key"] + "@default-precision")
        if extra:
            row["eval_default_precision"] = extra
    return {**info, "fp32_accuracy": ev["results"][REFERENCE]["accuracy"], "runtimes": ev["versions"], "rows": rows,
            "cpu": cpu(), "onnx_scoring": "ONNX Runtime's fused integer kernels" if args.fused_qdq else
            f"Q/DQ as written ({EXACT_QDQ}=1)"}


def cpu() -> dict[str, Any]:
    """This CPU's name and whether OpenVINO's default inference precision on it is bf16 (AMX or AVX-512 BF16)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    bf16 = bool(flags & {"amx_bf16", "avx512_bf16"})
    return {"model": name, "bf16": bf16, "default_precision": "bf16 on this CPU" if bf16 else
            "f32 on this CPU, which has no AMX / AVX-512 BF16: the same as the f32 row",
            # without VNNI/AMX, oneDNN (OpenVINO) and ORT's fused kernels run INT8 with saturating 16-bit sums
            "int8_exact": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})}


def _eval_key(path: str | Path, hint: str | None, info: dict[str, Any]) -> str:
    """What a score depends on: the graph's bytes (with an IR's weights), the runtime hint, the FP32 graph
    and the evaluation photos."""
    h = hashlib.sha256(f"{hint}|{info['fp32_sha256']}|{info['sets']['eval']['digest']}|".encode())
    for f in (Path(path), Path(path).with_suffix(".bin")):
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:32]


def _metric_cells(e: dict[str, Any]) -> str:
    """top-1 | drop [CI] | agreement [CI] | mean cos | worst cos |, the intervals where recorded."""
    drop, agree = f"{e['drop_points']:+.1f}", f"{100 * e['top1_agreement']:.1f}%"
    if "drop_points_ci95" in e:
        lo, hi = e["drop_points_ci95"]
        drop += f" [{lo:+.1f}, {hi:+.1f}]"
        lo, hi = e["top1_agreement_ci95"]
        agree += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{100 * e['accuracy']:.1f}% | {drop} | {agree} | {e['mean_cosine']:.4f} | {e['min_cosine']:.4f} |"


def pool(works: list[Path]) -> str:
    """One table over several finished --work folders (each fold of a cross-validation): every variant
    they all scored, its per-photo records concatenated, with bootstrap intervals over all of them.

    The folds must score different photos (a photo scored twice would count twice); that is checked.
    """
    results = [json.loads((w / "results.json").read_text()) for w in works]
    seen: dict[str, Path] = {}
    for w, res in zip(works, results, strict=True):
        for name in res.get("eval_files") or []:
            if name in seen:
                raise SystemExit(f"{name} is scored in both {seen[name]} and {w}: pool folds that score "
                                 "different photos (e.g. --calibrate-on even and odd with one --split-seed)")
            seen[name] = w
    keys = [r["key"] for r in results[0]["rows"] if "per_image" in r.get("eval", {})]
    keys = [k for k in keys if all(any(r["key"] == k and "per_image" in r.get("eval", {}) for r in res["rows"])
                                   for res in results)]
    folds = ", ".join(f"{w.name} ({res['halves']['calibration']} rows calibrate, split seed "
                      f"{res['halves'].get('split_seed')})" if "halves" in res else f"{w.name} ({res.get('protocol')})"
                      for w, res in zip(works, results, strict=True))
    out = [f"Pooled over {len(works)} fold(s): {folds}; {len(seen)} photos scored, each by graphs that no "
           "calibration of its own fold touched.\n",
           "| quantizer | top-1 | drop (pt) [95% CI] | top-1 agreement [95% CI] | mean cos | worst cos |",
           "|---|--:|--:|--:|--:|--:|"]
    for key in keys:
        merged: dict[str, list[float]] = {}
        for res in results:
            row = next(r for r in res["rows"] if r["key"] == key)
            for field, values in row["eval"]["per_image"].items():
                merged.setdefault(field, []).extend(values)
        out.append(f"| {key} | {_metric_cells(summary(merged))}")
    return "\n".join(out) + "\n"


def _fp32_ops_cell(p: dict[str, Any]) -> str:
    ops = p.get("fp32_compute_ops")
    if not ops:
        return "-"
    detail = ", ".join(f"{k} {v}" for k, v in ops["by_op"].items())
    return f"{ops['total']}" + (f" ({detail})" if detail else "") + f"; LN {ops['layernorm']}" + (
        f"; {ops['untyped']} untyped" if ops["untyped"] else "")


def _placement_cells(p: dict[str, Any]) -> str:
    """weight GEMMs | attention | FP32 ops | Q/DQ | zero points | DQ also feeds | ops added |"""
    if p["format"].startswith("onnx"):
        nodes = f"{p['quantize_linear']} / {p['dequantize_linear']}"
        types = ", ".join(f"{k} {v}" for k, v in p["zero_point_types"].items())
        zp = "-" if not p["quantize_linear"] + p["dequantize_linear"] else (
            f"0: {types}" if p["zero_points_0_signed"] else
            f"{p['nonzero_zero_point_q']} of {p['quantize_linear']} Q nonzero (asymmetric); {types}")
        which = ", ".join(p["attention_quantized_which"])
        kinds = ", ".join(p["attention_types"])
        att = p["attention_quantized"] + (f" ({which}: {kinds})" if which else "")
        weights = ", ".join(f"{k} {v}" for k, v in p["weight_ops_types"].items())
    else:
        nodes = f"{p['fake_quantize']} FQ" + (f", {p['fake_convert']} FakeConvert" if p.get("fake_convert") else "")
        which = ", ".join(p.get("attention_quantized_which", []))
        att = p["attention_quantized"] + (f" ({which})" if which else "")
        weights = "f8e4m3 (FakeConvert)" if p.get("fake_convert") else "int8 (FQ)"
        zp = f"FakeQuantize: {p['asymmetric_activations']} of {p['activation_fq']} activation ranges asymmetric"
    added = ", ".join(f"{k} +{v}" for k, v in p["ops_added"].items()) or "-"
    feeds = ", ".join(f"{k} {v}" for k, v in p.get("dq_also_feeds", {}).items()) or "-"
    return (f"{p['weight_ops_quantized']}/{p['weight_ops']}" + (f" {weights}" if p["weight_ops_quantized"] else "")
            + f" | {att} | {_fp32_ops_cell(p)} | {nodes} | {zp} | {feeds} | {added} |")


def _source_cell(e: dict[str, Any]) -> str:
    lo, hi = e["drop_points_ci95"]
    alo, ahi = e["top1_agreement_ci95"]
    return (f"{100 * e['accuracy']:.1f}%, {e['drop_points']:+.2f} [{lo:+.1f}, {hi:+.1f}], "
            f"{100 * e['top1_agreement']:.1f}% [{100 * alo:.1f}, {100 * ahi:.1f}]")


def markdown(res: dict[str, Any]) -> str:
    out = [f"Real ViT-Ti/16 (augreg in21k->in1k) at 224, {res['num_tokens']} tokens, preprocessing resize "
           f"{res['preprocessing'].get('resize')} crop {res['preprocessing'].get('crop')}; {res['protocol_text']}; "
           f"FP32 top-1 {100 * res['fp32_accuracy']:.2f}% (ONNX Runtime {res['runtimes']['onnxruntime']} CPU, "
           f"{res.get('onnx_scoring', 'fused integer kernels')}; CPU {res.get('cpu', {}).get('model', '?')}"
           + ("" if res.get("cpu", {}).get("int8_exact", True) else ", no VNNI/AMX: OpenVINO's INT8 kernels saturate "
              "(7-bit weights), so its INT8 rows read lower than the graph")
           + (f", OpenVINO {res['runtimes']['openvino']}" if "openvino" in res["runtimes"] else "") + ").\n",
           "| row | top-1 | drop (pt) [95% CI] | top-1 agreement [95% CI] | mean cos | worst cos "
           "| weight GEMMs Q/DQ on both inputs | attention BMMs Q/DQ | FP32 compute ops (strongly typed); LN FP32 "
           "| Q / DQ (FQ) | zero points | DQ also feeds | ops added | quant s | eval s |",
           "|---|--:|--:|--:|--:|--:|---|---|---|---|---|---|---|--:|--:|"]
    for r in res["rows"]:
        if "skipped" in r or "error" in r:
            out.append(f"| {r['key']} | {'skipped' if 'skipped' in r else 'FAILED'}: "
                       f"{(r.get('skipped') or r.get('error'))[:200]} |||||||||||||")
            continue
        e = r.get("eval", {})
        metrics = (f"FAILED: {e.get('error', 'not evaluated')[:150]} |||||" if "error" in e or not e
                   else _metric_cells(e))
        out.append(f"| {r['key']} | {metrics} {_placement_cells(r['placement'])} {r['seconds']:.0f} "
                   f"| {e.get('seconds', '')} |")
        d = r.get("eval_default_precision")
        if d and "error" not in d:
            out.append(f"| {r['key']}, OpenVINO default precision ({res.get('cpu', {}).get('default_precision')}) "
                       f"| {_metric_cells(d)} "
                       f"||||||| | {d.get('seconds', '')} |")
    scored = [r for r in res["rows"] if "by_source" in r.get("eval", {})]
    if scored:
        sources = scored[0]["eval"]["by_source"]
        out += ["\nPer source: top-1, drop (pt) [95% CI], agreement [95% CI].\n",
                "| row | " + " | ".join(f"{k} ({v['images']})" for k, v in sources.items()) + " |",
                "|---|" + "--:|" * len(sources),
                "| FP32 reference top-1 | " + " | ".join(f"{100 * v['reference_accuracy']:.1f}%"
                                                    for v in sources.values()) + " |"]
        out += [f"| {r['key']} | " + " | ".join(_source_cell(v) for v in r["eval"]["by_source"].values()) + " |"
                for r in scored]
    out.append("\nFP32 compute ops: nodes among " + ", ".join(COMPUTE_OPS) + " whose output ONNX shape inference "
               "types FLOAT (what a strongly typed TensorRT runs in FP32); LN = LayerNormalization with a FLOAT output "
               "(our FP16 policy keeps it FP32). ModelOpt 0.47's ONNX path has no int8_sq mode (int8, fp8, int4 "
               "only; SmoothQuant is in its PyTorch path), so no such row.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--worker-args", help=argparse.SUPPRESS)
    p.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata",
                   help="the folder with vit-ti16-augreg/ and imagenet-dev-500/ (default: ../shared/realdata)")
    p.add_argument("--modelopt-python", default=None,
                   help="interpreter of ModelOpt's virtualenv; without it the ModelOpt rows are skipped")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--work", type=Path, default=Path("/tmp/quantcmp-real"))
    p.add_argument("--reuse", action="store_true", help="reuse quantized graphs already in --work")
    p.add_argument("--redo", nargs="+", default=[], choices=list(VARIANTS),
                   help="with --reuse: quantize these again (e.g. --redo ours ours-cpu after changing our quantizer)")
    p.add_argument("--fresh", action="store_true", help="delete --work first")
    p.add_argument("--crop-pct", type=float, default=CROP_PCT,
                   help=f"export's crop_pct (default {CROP_PCT}: this model's own, resize 248; 0.875 = resize 256, "
                        "the earlier studies' export; use another --work)")
    p.add_argument("--fused-qdq", action="store_true",
                   help="score ONNX graphs with ONNX Runtime's fused integer kernels (its default) instead of Q/DQ "
                        "as written; on a CPU without VNNI/AMX those saturate (an error of the CPU, not the graph)")
    p.add_argument("--protocol", choices=("heldout", "halves"), default="heldout",
                   help="heldout (default): calibrate on build-engine's 256-photo sample of imagenet-dev-500, score "
                        "on imagenet-val-dev + the other 244; halves: imagenet-dev-500's even/odd rows (issue 10)")
    p.add_argument("--calibrate-on", choices=("even", "odd"), default=None,
                   help="--protocol halves: the half of labels.csv's rows that calibrates; the other half scores "
                        "(default: even; odd swaps the halves: use another --work, its graphs differ)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="--protocol halves: shuffle labels.csv's rows by this seed before the even/odd split "
                        "(a random half; default: file order)")
    p.add_argument("--pool", type=Path, nargs="+", default=None, metavar="WORK",
                   help="print one table over finished --work folders (cross-validation folds) and exit")
    args = p.parse_args(argv)

    if args.pool:
        print(pool(args.pool))
        return 0
    if args.worker:
        result = WORKERS[args.worker](json.loads(args.worker_args))
        print(RESULT + json.dumps(result, default=str))
        return 0
    if args.protocol == "heldout" and (args.calibrate_on or args.split_seed is not None):
        raise SystemExit("--calibrate-on and --split-seed choose halves: add --protocol halves")
    needed = [WEIGHTS, f"{PHOTOS}/labels.csv"] + ([f"{VALIDATION}/labels.csv"] if args.protocol == "heldout" else [])
    lacking = [n for n in needed if not (args.realdata / n).is_file()]
    if lacking:
        raise SystemExit(f"{args.realdata} lacks {', '.join(lacking)}; pass --realdata")
    if args.fresh and args.work.exists():
        import shutil

        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - t0:7.1f}s {msg}", file=sys.stderr, flush=True)

    res = run(args, log)
    (args.work / "results.json").write_text(json.dumps(res, indent=2, default=str))
    table = markdown(res)
    (args.work / "results.md").write_text(table)
    print(table)
    log(f"done; {args.work / 'results.md'}, {args.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
