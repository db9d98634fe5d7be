"""INT8 or FP8 Q/DQ quantization of a vit-deploy FP32 ONNX with NVIDIA ModelOpt, on CPU only.

Maintainer tool for the quantizer comparison (tools/compare_quantizers.py, docs/quantizers.md);
the product itself quantizes with its own quantizer (vit_deploy/onnx/quantize.py).

ModelOpt (`nvidia-modelopt[onnx]`) pins onnx~=1.21, onnxruntime-gpu~=1.24 and cupy-cuda12x,
which clash with the project's environment, so this runs in its own virtualenv:

    python3 -m venv /tmp/movenv
    /tmp/movenv/bin/pip install torch==2.13.0            # first: the CPU wheel; never a bare `torch`
    echo torch==2.13.0 > /tmp/mo-constraints.txt
    /tmp/movenv/bin/pip install -c /tmp/mo-constraints.txt "nvidia-modelopt[onnx]==0.47.0" \\
        onnxsim safetensors click pillow scikit-image
    /tmp/movenv/bin/pip install --no-deps -e .

    /tmp/movenv/bin/python tools/modelopt_quantize.py artifacts/b16-224/model.onnx /tmp/b16.mo.onnx \\
        --calib calibration/photos.txt --method entropy

What ModelOpt 0.47 does with these settings (read from modelopt/onnx/quantization/*.py):
- activations: INT8, symmetric, per tensor (ORT quantizer with ActivationSymmetric=True);
  weights: INT8 symmetric, per output channel (per_channel=True; ORT's default MatMul axis is the
  last one, N of a [K, N] weight), written as float weight -> Q -> DQ (AddQDQPairToWeight);
  zero points are 0 everywhere.
- placement: its own TensorRT-oriented partitioner, not "every op of a type". It quantizes the
  inputs of MatMul/Gemm/Conv and of pointwise ops outside fused patterns; LayerNormalization (and
  the decomposed LayerNorm chain), the exact-erf GELU chain and the MHA core (MatMul -> Softmax ->
  MatMul) are non-quantizable partitions; no output Q/DQ (OpTypesToExcludeOutputQuantization =
  every op type). On our ViT graphs that means: every linear MatMul and the patch Conv, plus the
  residual Adds (non-residual input) and, through its Conv -> LayerNorm rule, the residual stream
  entering most LayerNormalization nodes. The two attention MatMuls are quantized on their inputs
  unless excluded: for int8 it excludes them itself when seq_len > 512 (found by running the model
  once; checked on b16 at 384), or always with disable_mha_qdq=True.
- Softmax: when attention is quantized, the Softmax output range is pinned to [0, 1] (scale 1/127,
  its patched adjust_tensor_ranges), whatever calibration saw; ruinous for flat attention over
  many tokens (see docs/quantizers.md).
- it also drops MatMuls it judges too small for TensorRT INT8 kernels (GEMV: M or N == 1, or
  K or N < 16; e.g. a 10-class head), unless enable_gemv_detection_for_trt=False.
- the graph is upgraded to opset >= 19; high_precision_dtype="fp16" (its default) would also
  convert everything else to FP16. Here it is "fp32" unless asked, so that only the INT8 error is
  measured (the product makes FP16 a separate graph).
- fp8 (quantize_mode="fp8", modelopt/onnx/quantization/fp8.py) is the INT8 path above with the
  same placement, then every INT8 Q/DQ rewritten to FLOAT8E4M3FN with scale * 448 / 127
  (int8_to_fp8, whose docstring says it is right for max-calibrated graphs only) and opset 21.
  Its calibration default is nevertheless "entropy", as for int8 (quantize(): calibration_method
  or "entropy"); pass "max" for what its docstring and NVIDIA's ViT FP8 recipe use.
- nodes_to_exclude entries are regular expressions applied with re.match (a prefix match):
  "/blocks.1/attn/MatMul" would also exclude "/blocks.1/attn/MatMul_1" and "/blocks.10/...",
  so exact names are passed here as re.escape(name) + "$".
- calibration: "max" (ORT MinMax on symmetric ranges) or "entropy" (ORT Entropy, 128 bins);
  no percentile. Calibration runs batch by batch (ModelOpt patches ORT's calibrators so that
  intermediate outputs do not pile up), on the execution providers in calibration_eps; "cpu"
  only here.
- importing it monkey-patches onnxruntime.quantization (calibrators, QDQ registry): do not run
  ORT's own quantize_static in the same process afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

METHODS = {"max": "max", "minmax": "max", "entropy": "entropy"}


def _input_name_and_shape(model) -> tuple[str, list[int]]:
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


def summarize_qdq(model) -> dict[str, Any]:
    """Q/DQ counts, zero points, weight-scale shapes and which MatMuls have INT8 inputs."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consts = {o: n for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}

    def value(name: str):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    zps = [value(n.input[2]) for n in q + dq if len(n.input) > 2 and n.input[2]]
    nonzero_zp = sum(int(np.any(z != 0)) for z in zps if z is not None)
    per_channel = per_tensor_w = stored_int8 = stored_float = 0
    for n in dq:
        src = producer.get(n.input[0])
        from_weight_q = src is not None and src.op_type == "QuantizeLinear" and src.input[0] in inits
        if n.input[0] in inits:
            stored_int8 += 1
        elif from_weight_q:
            stored_float += 1
        else:
            continue
        s = value(n.input[1])
        if s is not None and s.size > 1:
            per_channel += 1
        else:
            per_tensor_w += 1
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    quantized = [n.name for n in matmuls if all(
        producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input[:2])]
    consumers_of_dq = {}
    for n in model.graph.node:
        for i in n.input:
            if i in producer and producer[i].op_type == "DequantizeLinear":
                consumers_of_dq[n.op_type] = consumers_of_dq.get(n.op_type, 0) + 1
    activation_q = [n for n in q if n.input[0] not in inits]
    return {
        "quantize_linear": len(q),
        "dequantize_linear": len(dq),
        "activation_q": len(activation_q),
        "weight_dq": stored_int8 + stored_float,
        "weights_stored": ("int8" if stored_int8 and not stored_float else "float32 + Q" if not stored_int8
                           else f"{stored_int8} int8, {stored_float} float"),
        "nonzero_zero_points": nonzero_zp,
        "weights_per_channel": per_channel,
        "weights_per_tensor": per_tensor_w,
        "matmuls": len(matmuls),
        "matmuls_quantized": quantized,
        "dq_consumers_by_op": dict(sorted(consumers_of_dq.items())),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
    }


def quantize_with_modelopt(
    fp32_onnx: Path,
    out_onnx: Path,
    calib: np.ndarray,
    method: str,
    exclude_nodes: list[str],
    *,
    batch: int = 8,
    op_types: list[str] | None = None,
    op_types_to_exclude: list[str] | None = None,
    quantize_mode: str = "int8",
    disable_mha_qdq: bool = False,
    gemv_detection: bool = True,
    high_precision_dtype: str = "fp32",
    log_level: str = "WARNING",
) -> dict[str, Any]:
    """Write ModelOpt's INT8 (or FP8) Q/DQ graph of ``fp32_onnx`` to ``out_onnx``; return the settings used.

    ``calib``: float32 [N, C, H, W], already preprocessed. ``method``: max/minmax or entropy.
    ``exclude_nodes``: exact node names to keep out of INT8 (escaped for ModelOpt's regex match).
    ``op_types``: None = ModelOpt's own TensorRT-oriented placement; a list (e.g. MatMul, Gemm,
    Conv) = Q/DQ on the inputs of every node of those types instead (its GEMV/MHA/explicit
    exclusions still apply). ``op_types_to_exclude``: op types it must not quantize (e.g. Add).
    ``quantize_mode``: "int8" or "fp8".
    Calibration runs on ONNX Runtime's CPUExecutionProvider only.
    """
    import onnx
    from modelopt.onnx.quantization import quantize

    if method not in METHODS:
        raise ValueError(f"ModelOpt calibration method must be one of {sorted(METHODS)}, not {method!r}")
    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    header = onnx.load(str(fp32_onnx), load_external_data=False)
    name, dims = _input_name_and_shape(header)
    batch = max(1, min(batch, len(calib)))
    shape = [batch] + [int(d) if d > 0 else int(s) for d, s in zip(dims[1:], calib.shape[1:], strict=True)]
    patterns = [re.escape(n) + "$" for n in exclude_nodes]
    kwargs: dict[str, Any] = {}
    if not gemv_detection:
        kwargs["enable_gemv_detection_for_trt"] = False
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # ORT's calibrators print(); keep stdout for results
        quantize(
            onnx_path=str(fp32_onnx),
            quantize_mode=quantize_mode,
            calibration_data={name: calib},
            calibration_method=METHODS[method],
            calibration_shapes=f"{name}:" + "x".join(map(str, shape)),
            calibration_eps=["cpu"],
            op_types_to_quantize=list(op_types) if op_types else None,
            op_types_to_exclude=list(op_types_to_exclude) if op_types_to_exclude else None,
            nodes_to_exclude=list(patterns),  # ModelOpt appends to this list: pass a copy
            disable_mha_qdq=disable_mha_qdq,
            high_precision_dtype=high_precision_dtype,
            use_external_data_format=fp32_onnx.stat().st_size > (1 << 30),
            output_path=str(out_onnx),
            log_level=log_level,
            **kwargs,
        )
    seconds = time.perf_counter() - t0
    if not out_onnx.is_file():
        raise RuntimeError(f"ModelOpt wrote no model to {out_onnx}")
    return {
        "quantizer": "modelopt.onnx.quantization.quantize (nvidia-modelopt "
        f"{_version('nvidia-modelopt')}, onnxruntime {_version('onnxruntime-gpu') or _version('onnxruntime')})",
        "quantize_mode": quantize_mode,
        "activations": f"{quantize_mode} symmetric per-tensor (ActivationSymmetric=True, zero point 0)",
        "weights": f"{quantize_mode} symmetric per-channel (per_channel=True)",
        "placement": (f"inputs of every {'/'.join(op_types)} (op_types_to_quantize)" if op_types
                      else "ModelOpt TensorRT partitioner (op_types_to_quantize=None)"),
        "calibration_method": METHODS[method],
        "calibration_images": int(len(calib)),
        "calibration_batch": batch,
        "calibration_eps": ["cpu"],
        "exclude_nodes": list(exclude_nodes),
        "op_types_to_exclude": list(op_types_to_exclude or []),
        "exclude_patterns": patterns,
        "disable_mha_qdq": disable_mha_qdq,
        "gemv_detection": gemv_detection,
        "high_precision_dtype": high_precision_dtype,
        "seconds": round(seconds, 2),
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _load_calib(spec: str, fp32_onnx: Path, count: int) -> np.ndarray:
    if spec.endswith(".npy"):
        return np.load(spec)[:count]
    # a folder or definition file: preprocess as the artifact's manifest says
    from vit_deploy.images.sets import load_image_set
    from vit_deploy.specs import Preprocessing

    manifest = json.loads((fp32_onnx.parent / "manifest.json").read_text())
    prep = Preprocessing.from_dict(manifest["preprocessing"])
    return load_image_set(spec, prep, count=count).images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fp32_onnx", type=Path)
    p.add_argument("out_onnx", type=Path)
    p.add_argument("--calib", default=None, help="a .npy [N,C,H,W] array, or images (folder / definition file); "
                   "default: 16 random normal images")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--method", default="entropy", choices=sorted(METHODS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--exclude", nargs="*", default=[], help="exact node names to keep in float")
    p.add_argument("--exclude-attention", action="store_true",
                   help="keep both attention MatMuls (inputs both activations) of every block in float")
    p.add_argument("--no-gemv-detection", action="store_true")
    p.add_argument("--op-types", nargs="*", default=None,
                   help="quantize the inputs of every node of these types instead of ModelOpt's placement")
    args = p.parse_args(argv)

    import onnx

    model = onnx.load(str(args.fp32_onnx), load_external_data=False)
    if args.calib is None:
        _, dims = _input_name_and_shape(model)
        calib = np.random.default_rng(0).standard_normal([16] + dims[1:]).astype(np.float32)
    else:
        calib = _load_calib(args.calib, args.fp32_onnx, args.count)
    exclude = list(args.exclude)
    if args.exclude_attention:
        from vit_deploy.onnx.quantize import attention_matmuls

        exclude += attention_matmuls(model)
    settings = quantize_with_modelopt(args.fp32_onnx, args.out_onnx, calib, args.method, exclude,
                                      batch=args.batch, op_types=args.op_types,
                                      gemv_detection=not args.no_gemv_detection)
    settings["graph"] = summarize_qdq(onnx.load(str(args.out_onnx), load_external_data=False))
    json.dump(settings, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
