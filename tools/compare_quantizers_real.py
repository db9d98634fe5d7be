"""INT8 quantizers on a real, trained ViT-Ti/16 and real ImageNet photos: ours, NNCF, ModelOpt.

The protocol (issue 10), the same for every row so the rows compare:
- model: ``REALDATA/vit-ti16-augreg/model.safetensors`` exported once with
  ``vit-deploy export --model ti16 --res 224 --weights ...`` (FP32 ONNX + manifest);
- photos: ``REALDATA/imagenet-dev-500`` with ``labels.csv``; its data rows in file order, even
  row indices (0, 2, 4, ...) are the calibration half (250), odd ones the evaluation half (250)
  that no calibration touches. Both halves are read once with ``vit_deploy.images.sets.
  load_image_set`` and the manifest's preprocessing, and every quantizer gets the same arrays;
- calibration: all 250 calibration images, seed 0, batch 8 where the quantizer batches
  (NNCF takes one image per item, as its examples do; its ``subset_size`` is 250);
- scoring: every INT8 graph against the FP32 ONNX graph on the evaluation half, ONNX graphs on
  ONNX Runtime's CPU provider, OpenVINO IR on OpenVINO CPU with ``INFERENCE_PRECISION_HINT=f32``
  (this machine has AMX: OpenVINO's default would also run the float parts in bf16; one extra
  row shows that default): top-1 accuracy, drop vs FP32 in points, top-1 agreement with FP32,
  mean and worst per-image cosine of the logits;
- placement: Q/DQ (or FakeQuantize) nodes, how many of the 50 weight ops (qkv, proj, fc1, fc2
  x 12, head, patch embedding) have INT8 on both inputs, which attention MatMuls do, whether
  every zero point is 0 and signed (TensorRT reads INT8 Q/DQ with zero point 0 only), and the
  ops added besides Q/DQ (NNCF's SmoothQuant Mul nodes).

Rows (``--variants`` picks some):
  ours, ours-cpu            vit_deploy.onnx.int8.quantize_int8 as build-engine --int8 calls it, tensorrt / cpu
  ours-all-int8, ours-nosq  the same without the accuracy-budget fallback, and also without SmoothQuant
  nncf-onnx                 nncf.quantize(onnx model, model_type=TRANSFORMER), default (mixed) preset
  nncf-onnx-performance     the same, preset=PERFORMANCE (symmetric activations)
  nncf-onnx-performance-nosq  the same, SmoothQuant off (smooth_quant_alphas.matmul = -1)
  nncf-openvino             OpenVINO IR of the export + nncf.quantize(model_type=TRANSFORMER)
  modelopt-int8             ModelOpt 0.47 quantize(quantize_mode="int8"), its defaults
                            (entropy, its own TensorRT placement); high_precision_dtype fp32
  modelopt-int8-matmul      the same with op_types_to_quantize MatMul Gemm Conv
ModelOpt 0.47's ONNX path has no ``int8_sq`` (its modes are int8, fp8, int4; SmoothQuant is in
its PyTorch path only), so there is no such row.

Each quantizer runs in a fresh interpreter. Ours and NNCF in the project's environment (this
interpreter; NNCF: ``pip install nncf``, rows skipped with the reason when missing); ModelOpt
in its own virtualenv, given with ``--modelopt-python`` (recipe in tools/compare_quantizers.py,
whose venv it is), skipped when not given:

    python tools/compare_quantizers_real.py --realdata ../shared/realdata \\
        --modelopt-python /tmp/movenv/bin/python --work /tmp/quantcmp-real

``--calibrate-on odd`` swaps the halves (into another --work): scoring both ways scores all 500
photos, each by graphs that no calibration of its own half touched. ``--split-seed N`` shuffles the
rows by N before the even/odd split (a random half and its complement), and ``--pool WORK ...``
prints one table over finished folds (each photo scored once), so that a repeated two-fold
cross-validation reads a drop and an agreement on many more photos than one half:

    for seed in 1 2; do for half in even odd; do
      python tools/compare_quantizers_real.py --split-seed $seed --calibrate-on $half --work /tmp/cv-$seed-$half
    done; done
    python tools/compare_quantizers_real.py --pool /tmp/cv-1-even /tmp/cv-1-odd   # one seed: all 500 photos

Every drop and agreement comes with its 95% bootstrap interval (photos resampled, each photo's FP32
and INT8 results together; ``vit_deploy.parity.metrics.intervals``).

Results: a markdown table on stdout and ``results.md`` / ``results.json`` in --work (the export
and the image arrays are kept there and reused; --reuse also keeps the quantized graphs, and
--reuse --redo ours ours-cpu quantizes our rows anew beside the peers' kept graphs; --fresh
starts over). Time on 2 shared cores (2026-12): 6.7 minutes for every row (export 14 s, each
quantizer 33-54 s, the evaluation of all 10 graphs 50 s).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
RESULT = "RESULT-JSON "
WEIGHTS = "vit-ti16-augreg/model.safetensors"
PHOTOS = "imagenet-dev-500"
BATCH = 8
SEED = 0

# name -> (worker, settings, interpreter: "main" or "modelopt", description)
VARIANTS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "ours": ("ours", {"target": "tensorrt", "budget": True}, "main",
             "vit-deploy, build-engine --int8 defaults (with the accuracy-budget fallback)"),
    "ours-cpu": ("ours", {"target": "cpu", "budget": True}, "main", "vit-deploy, the same with --target cpu"),
    "ours-all-int8": ("ours", {"target": "tensorrt", "budget": False}, "main",
                      "vit-deploy, every weight layer INT8 (no fallback)"),
    "ours-nosq": ("ours", {"target": "tensorrt", "budget": False, "smooth": False}, "main",
                  "vit-deploy, SmoothQuant off, no fallback"),
    "nncf-onnx": ("nncf_onnx", {"preset": None, "smooth_quant": True}, "main",
                  "NNCF ONNX, TRANSFORMER, default preset (mixed)"),
    "nncf-onnx-performance": ("nncf_onnx", {"preset": "PERFORMANCE", "smooth_quant": True}, "main",
                              "NNCF ONNX, TRANSFORMER, preset PERFORMANCE"),
    "nncf-onnx-performance-nosq": ("nncf_onnx", {"preset": "PERFORMANCE", "smooth_quant": False}, "main",
                                   "NNCF ONNX, TRANSFORMER, PERFORMANCE, SmoothQuant off"),
    "nncf-openvino": ("nncf_openvino", {}, "main", "OpenVINO IR + NNCF, TRANSFORMER"),
    "modelopt-int8": ("modelopt", {"op_types": None}, "modelopt", "ModelOpt int8, defaults (entropy)"),
    "modelopt-int8-matmul": ("modelopt", {"op_types": ["MatMul", "Gemm", "Conv"]}, "modelopt",
                             "ModelOpt int8, op_types MatMul Gemm Conv (entropy)"),
}
WEIGHT_ROLES = ("patch_embed", "qkv", "proj", "fc1", "fc2", "head")  # patch_embed first: its Conv is .../proj
# ops a DQ may sit behind and still feed a GEMM with INT8 (data movement only: TensorRT moves Q/DQ across them)
LAYOUT_OPS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gather", "Slice", "Split"}


# ---------------------------------------------------------------------------------------------
# workers: each runs in a fresh interpreter and prints one RESULT line


def _worker_ours(a: dict[str, Any]) -> dict[str, Any]:
    from vit_deploy.onnx.int8 import quantize_int8
    from vit_deploy.steps.precision import PrecisionOptions, int8_budget

    calib = np.load(a["calib"])
    settings = a["settings"]
    budget = None
    if settings["budget"]:  # what build-engine --int8 passes for a pretrained model, with its defaults
        defaults = PrecisionOptions("int8")
        budget = int8_budget(defaults.accuracy_budget, defaults.max_float_layers, pretrained=True)
    t0 = time.perf_counter()
    policy = quantize_int8(Path(a["fp32"]), Path(a["out"]), calib, num_tokens=a["num_tokens"], batch=a["batch"],
                           target=settings["target"], smooth=settings.get("smooth", True), budget=budget)
    return {"seconds": time.perf_counter() - t0, "settings": policy}


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
    model = ov.Core().read_model(a["fp32"])
    t0 = time.perf_counter()
    quantized = nncf.quantize(model, _nncf_dataset(calib, 0), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calib))
    seconds = time.perf_counter() - t0
    ov.save_model(quantized, a["out"], compress_to_fp16=False)
    return {"seconds": seconds, "settings": {
        "quantizer": f"nncf {nncf.__version__} on OpenVINO {ov.__version__} IR", "model_type": "TRANSFORMER",
        "preset": "default (MIXED for TRANSFORMER)", "subset_size": len(calib), "items": "one image per item"}}


def _worker_modelopt(a: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(TOOLS))
    from modelopt_quantize import quantize_with_modelopt

    calib = np.load(a["calib"])
    # entropy is ModelOpt's default int8 calibration; nothing excluded (197 tokens <= 512)
    settings = quantize_with_modelopt(Path(a["fp32"]), Path(a["out"]), calib, "entropy", [], batch=a["batch"],
                                      op_types=a["settings"]["op_types"])
    return {"seconds": settings["seconds"], "settings": settings}


def _worker_evaluate(a: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    images = np.load(a["images"])
    labels = np.load(a["labels"])
    batch = a["batch"]

    def run_ort(path: str) -> np.ndarray:
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {s.get_inputs()[0].name: images[i:i + batch]})[0]
                               for i in range(0, len(images), batch)])

    def run_ov(path: str, hint: str | None) -> np.ndarray:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
        compiled = ov.Core().compile_model(path, "CPU", config)
        return np.concatenate([compiled(images[i:i + batch])[0] for i in range(0, len(images), batch)])

    ref = run_ort(a["fp32"])
    results: dict[str, Any] = {"fp32": {"accuracy": float(np.mean(ref.argmax(-1) == labels))}}
    versions = {"onnxruntime": ort.__version__}
    for key, (path, hint) in a["candidates"].items():
        try:
            logits = run_ov(path, hint) if path.endswith(".xml") else run_ort(path)
        except Exception as e:  # a graph the runtime cannot run is a result too
            results[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        if path.endswith(".xml"):
            import openvino as ov

            versions["openvino"] = ov.__version__
        results[key] = _metrics(ref, logits, labels)
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
        "accuracy": float(got.mean()),
        "drop_points": float(100 * (ref.mean() - got.mean())),
        "drop_points_ci95": [ci["accuracy_drop_ci95_low"], ci["accuracy_drop_ci95_high"]],
        "top1_agreement": float(agree.mean()),
        "top1_agreement_ci95": [ci["top1_agreement_ci95_low"], ci["top1_agreement_ci95_high"]],
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
    }


WORKERS = {"ours": _worker_ours, "nncf_onnx": _worker_nncf_onnx, "nncf_openvino": _worker_nncf_openvino,
           "modelopt": _worker_modelopt, "evaluate": _worker_evaluate}


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


def onnx_placement(path: Path, fp32: Any) -> dict[str, Any]:
    """Q/DQ counts, zero points, weight ops and attention MatMuls with INT8 inputs, ops added."""
    import onnx
    from onnx import numpy_helper

    from vit_deploy.onnx.int8 import attention_matmuls

    model = onnx.load(str(path), load_external_data=False)
    nodes = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}

    def int8_input(name: str) -> bool:  # produced by a DequantizeLinear, perhaps through layout-only ops
        seen = 0
        while name in producer and seen < 8:
            node = producer[name]
            if node.op_type == "DequantizeLinear":
                return True
            if node.op_type not in LAYOUT_OPS:
                return False
            name, seen = node.input[0], seen + 1
        return False

    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    zp_types, nonzero, nonzero_q = Counter(), 0, 0
    for n in q + dq:
        if len(n.input) > 2 and n.input[2] in inits:
            z = numpy_helper.to_array(inits[n.input[2]])
            zp_types[str(z.dtype)] += 1
            nonzero += int(np.any(z != 0))
            nonzero_q += int(n.op_type == "QuantizeLinear" and np.any(z != 0))
        else:
            zp_types["none (int8)" if n.op_type == "QuantizeLinear" else "none"] += 1
    weight_ops = [n for n in fp32.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and _role(n.name)]
    by_role: dict[str, list[int]] = {r: [0, 0] for r in WEIGHT_ROLES}
    for n in weight_ops:
        by_role[_role(n.name)][1] += 1
        m = nodes.get(n.name)
        if m is not None and all(int8_input(i) for i in m.input[:2]):
            by_role[_role(n.name)][0] += 1
    attention = attention_matmuls(fp32)
    att_q = [name for name in attention if name in nodes and all(int8_input(i) for i in nodes[name].input[:2])]
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
        "symmetric_signed": nonzero == 0 and set(zp_types) <= {"int8", "none (int8)", "none"},
        "weight_ops_int8": sum(v[0] for v in by_role.values()), "weight_ops": len(weight_ops),
        "weight_ops_by_role": {r: f"{a}/{b}" for r, (a, b) in by_role.items()},
        "attention_int8": f"{len(att_q)}/{len(attention)}",
        "attention_int8_which": sorted({re.sub(r".*/attn/", "", n) for n in att_q}),
        "ops_added": added, "ops_removed": dict(before - after), "dq_also_feeds": dict(sorted(feeds.items())),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
    }


def openvino_placement(path: Path) -> dict[str, Any]:
    """The same facts for an OpenVINO IR: FakeQuantize nodes, INT8 weights, ops feeding MatMul/Convolution."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    ops = model.get_ordered_ops()
    fq = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    weight_chain = {"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze"}

    def source(port: Any) -> Any:
        return port.get_source_output().get_node()

    def int8_activation(node: Any) -> bool:
        for _ in range(8):
            t = node.get_type_name()
            if t == "FakeQuantize":
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
            if t == "FakeQuantize":
                return True
            if t == "Constant" and n.get_output_element_type(0).get_type_name() in ("i8", "u8"):
                return True
            if t in weight_chain:
                stack += [source(i) for i in n.inputs()]
        return False

    by_role: dict[str, list[int]] = {r: [0, 0] for r in WEIGHT_ROLES}
    attention = [0, 0]
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
            attention[0] += int(int8_activation(a) and int8_activation(b))
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
        "weight_ops_int8": sum(v[0] for v in by_role.values()), "weight_ops": sum(v[1] for v in by_role.values()),
        "weight_ops_by_role": {r: f"{a}/{b}" for r, (a, b) in by_role.items()},
        "attention_int8": f"{attention[0]}/{attention[1]}",
        "activation_fq": activation_fq, "asymmetric_activations": asymmetric,
        "ops_added": {"Multiply (SmoothQuant)": sq} if sq else {}, "symmetric_signed": None,
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


def prepare(
    realdata: Path, work: Path, log: Any, calibrate_on: str = "even", split_seed: int | None = None,
) -> dict[str, Any]:
    from vit_deploy.images.sets import load_image_set
    from vit_deploy.specs import Preprocessing

    art = work / "ti16-224"
    weights = realdata / WEIGHTS
    if not (art / "manifest.json").is_file():
        log(f"export {weights} -> {art}")
        cmd = [sys.executable, "-c", "import sys; from vit_deploy.cli import main; main(sys.argv[1:])", "export",
               "--model", "ti16", "--res", "224", "--weights", str(weights), "--out", str(art)]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        (work / "export.log").write_text(p.stdout + p.stderr)
        if p.returncode != 0:
            raise SystemExit(f"export failed ({' '.join(cmd)}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    manifest = json.loads((art / "manifest.json").read_text())
    fp32 = art / manifest["files"][0]["path"]
    prep = Preprocessing.from_dict(manifest["preprocessing"])
    calib_def, eval_def, calib_labels, eval_labels = split_photos(realdata, work, calibrate_on, split_seed)
    sets = {}
    for key, spec, labels in (("calib", calib_def, calib_labels), ("eval", eval_def, eval_labels)):
        s = load_image_set(spec, prep, count=None, seed=SEED, role=key)
        if s.skipped or len(s.files) != len(labels):
            raise SystemExit(f"{spec}: {len(s.skipped)} image(s) skipped: {s.skipped[:3]}")
        np.save(work / f"{key}.npy", s.images)
        sets[key] = {"images": len(s.files), "digest": s.digest, "first": Path(s.files[0]).name}
    np.save(work / "eval_labels.npy", np.array(eval_labels, dtype=np.int64))
    m = manifest["model"]
    num_tokens = (m["img_size"] // m["patch_size"]) ** 2 + 1
    scored_on = "odd" if calibrate_on == "even" else "even"
    log(f"FP32 {fp32} ({num_tokens} tokens); calibration {sets['calib']['images']} photos ({calibrate_on} rows), "
        f"evaluation {sets['eval']['images']} ({scored_on} rows); preprocessing {prep.to_dict()}")
    return {"fp32": str(fp32), "fp32_sha256": hashlib.sha256(fp32.read_bytes()).hexdigest(), "num_tokens": num_tokens,
            "preprocessing": prep.to_dict(), "sets": sets, "weights": str(weights),
            "halves": {"calibration": calibrate_on, "evaluation": scored_on, "split_seed": split_seed},
            "eval_files": [Path(line.split("  ", 1)[1]).name for line in eval_def.read_text().splitlines()]}


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    import importlib.util

    import onnx

    work = args.work
    info = prepare(args.realdata, work, log, args.calibrate_on, args.split_seed)
    fp32 = Path(info["fp32"])
    fp32_model = onnx.load(str(fp32), load_external_data=False)
    rows, candidates = [], {}
    for name in args.variants:
        worker, settings, interp, description = VARIANTS[name]
        row: dict[str, Any] = {"key": name, "description": description}
        rows.append(row)
        missing = {"nncf_onnx": "nncf", "nncf_openvino": "nncf"}.get(worker)
        if interp == "modelopt" and not args.modelopt_python:
            row["skipped"] = "no --modelopt-python (ModelOpt's virtualenv; see tools/compare_quantizers.py)"
        elif missing and importlib.util.find_spec(missing) is None:
            row["skipped"] = f"{missing} is not installed here (pip install {missing})"
        elif worker == "nncf_openvino" and importlib.util.find_spec("openvino") is None:
            row["skipped"] = "openvino is not installed here"
        if "skipped" in row:
            log(f"{name}: skipped: {row['skipped']}")
            continue
        out = work / (f"{name}.int8.xml" if worker == "nncf_openvino" else f"{name}.int8.onnx")
        if args.reuse and name not in args.redo and out.is_file() and (work / f"{name}.json").is_file():
            r = json.loads((work / f"{name}.json").read_text())
            log(f"{name}: reusing {out}")
        else:
            log(f"{name}: quantize ({description})")
            python = args.modelopt_python if interp == "modelopt" else sys.executable
            r = _call(python, worker, {"fp32": str(fp32), "out": str(out), "calib": str(work / "calib.npy"),
                                       "num_tokens": info["num_tokens"], "batch": BATCH, "settings": settings},
                      work / f"{name}.log")
            if "error" not in r:
                (work / f"{name}.json").write_text(json.dumps(r, indent=2, default=str))
        row.update(r)
        if "error" in r:
            log(f"{name}: FAILED: {r['error']}")
            continue
        log(f"{name}: {r['seconds']:.1f} s")
        row["placement"] = (openvino_placement(out) if out.suffix == ".xml" else onnx_placement(out, fp32_model))
        candidates[name] = (str(out), "f32" if out.suffix == ".xml" else None)
        if out.suffix == ".xml":
            candidates[name + "@default-precision"] = (str(out), None)
    log(f"evaluate {len(candidates)} graph(s) + FP32 on {info['sets']['eval']['images']} photos")
    ev = _call(sys.executable, "evaluate", {"fp32": str(fp32), "candidates": candidates, "batch": BATCH,
                                            "images": str(work / "eval.npy"), "labels": str(work / "eval_labels.npy")},
               work / "evaluate.log")
    if "error" in ev:
        raise SystemExit(f"evaluation failed: {ev['error']} (log: {work / 'evaluate.log'})")
    for row in rows:
        if row["key"] in ev["results"]:
            row["eval"] = ev["results"][row["key"]]
        extra = ev["results"].get(row["key"] + "@default-precision")
        if extra:
            row["eval_default_precision"] = extra
    return {**info, "fp32_accuracy": ev["results"]["fp32"]["accuracy"], "runtimes": ev["versions"], "rows": rows,
            "protocol": f"calibration: {info['halves']['calibration']} data rows of labels.csv (250), evaluation: "
                        f"{info['halves']['evaluation']} rows (250); batch 8, seed 0"}


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
                      f"{res['halves'].get('split_seed')})" for w, res in zip(works, results, strict=True))
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


def markdown(res: dict[str, Any]) -> str:
    out = [f"Real ViT-Ti/16 (augreg in21k->in1k) at 224, {res['num_tokens']} tokens; calibration "
           f"{res['sets']['calib']['images']} photos ({res['halves']['calibration']} rows of labels.csv), evaluation "
           f"{res['sets']['eval']['images']} photos ({res['halves']['evaluation']} rows); "
           f"FP32 top-1 {100 * res['fp32_accuracy']:.1f}% "
           f"(ONNX Runtime {res['runtimes']['onnxruntime']} CPU).\n",
           "| quantizer | top-1 | drop (pt) [95% CI] | top-1 agreement [95% CI] | mean cos | worst cos "
           "| weight ops INT8 | attention INT8 | Q / DQ (FQ) | zero points | DQ also feeds | ops added | quant s |",
           "|---|--:|--:|--:|--:|--:|---|---|---|---|---|---|--:|"]
    for r in res["rows"]:
        if "skipped" in r or "error" in r:
            out.append(f"| {r['key']} | {'skipped' if 'skipped' in r else 'FAILED'}: "
                       f"{(r.get('skipped') or r.get('error'))[:200]} |||||||||||")
            continue
        e, p = r.get("eval", {}), r["placement"]
        if "error" in e or not e:
            metrics = f"FAILED: {e.get('error', 'not evaluated')[:150]} |||||"
        else:
            metrics = _metric_cells(e)
        if p["format"].startswith("onnx"):
            nodes = f"{p['quantize_linear']} / {p['dequantize_linear']}"
            types = ", ".join(f"{k} {v}" for k, v in p["zero_point_types"].items())
            zp = ("0, int8" if p["symmetric_signed"] else
                  f"{p['nonzero_zero_point_q']} of {p['quantize_linear']} Q nonzero (asymmetric); {types}")
            which = ", ".join(p["attention_int8_which"])
            att = p["attention_int8"] + (f" ({which})" if which else "")
        else:
            nodes, att = f"{p['fake_quantize']} FQ", p["attention_int8"]
            zp = f"FakeQuantize: {p['asymmetric_activations']} of {p['activation_fq']} activation ranges asymmetric"
        added = ", ".join(f"{k} +{v}" for k, v in p["ops_added"].items()) or "-"
        feeds = ", ".join(f"{k} {v}" for k, v in p.get("dq_also_feeds", {}).items()) or "-"
        out.append(f"| {r['key']} | {metrics} {p['weight_ops_int8']}/{p['weight_ops']} | {att} | {nodes} | {zp} "
                   f"| {feeds} | {added} | {r['seconds']:.0f} |")
        d = r.get("eval_default_precision")
        if d and "error" not in d:
            out.append(f"| {r['key']}, OpenVINO default precision (bf16 on this AMX CPU) | {100 * d['accuracy']:.1f}% "
                       f"| {d['drop_points']:+.1f} | {100 * d['top1_agreement']:.1f}% | {d['mean_cosine']:.4f} "
                       f"| {d['min_cosine']:.4f} | | | | | | | |")
    out.append("\nModelOpt 0.47's ONNX path has no int8_sq mode (int8, fp8, int4 only; SmoothQuant is in its "
               "PyTorch path), so no such row.")
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
    p.add_argument("--calibrate-on", choices=("even", "odd"), default="even",
                   help="the half of labels.csv's rows that calibrates; the other half scores (default: even, the "
                        "protocol's split; odd swaps the halves: use another --work, its graphs differ)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="shuffle labels.csv's rows by this seed before the even/odd split (a random half; "
                        "default: file order, the protocol's split)")
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
    if not (args.realdata / WEIGHTS).is_file() or not (args.realdata / PHOTOS / "labels.csv").is_file():
        raise SystemExit(f"{args.realdata} lacks {WEIGHTS} or {PHOTOS}/labels.csv; pass --realdata")
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
