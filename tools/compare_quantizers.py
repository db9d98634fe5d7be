"""Compare INT8 quantizers on the same FP32 graph and the same calibration images.

Measures, for each model below, the Q/DQ graphs written by
  (a) our path, ONNX Runtime ``quantize_static`` in QDQ format (``vit_deploy.onnx.int8``), and
  (b) NVIDIA ModelOpt ``modelopt.onnx.quantization.quantize`` (``tools/modelopt_quantize.py``),
      once with its own TensorRT-oriented Q/DQ placement and once "matched" (Q/DQ on the inputs of
      MatMul/Gemm/Conv only, as ours; its GEMV/small-GEMM exclusion off),
with matched settings where both tools have them: the same preprocessed images (loaded once with
``vit_deploy.images.sets``, handed to both as one array), the same batch, max/minmax and entropy
calibration (percentile exists in ours only), symmetric INT8 with per-channel weights, and the
same attention rule (both attention MatMuls of every block excluded when tokens > 512).
Every graph, and the FP32 one, runs on ONNX Runtime's CPU provider on the evaluation images:
relative L2 and worst per-image cosine of the logits against FP32, top-1 agreement, top-1
accuracy where the set has labels, Q/DQ node counts, which MatMuls have INT8 inputs, the
quantization wall time, and the CPU latency (informational: TensorRT, not ORT, runs these).

Models: (1) the trained ``mini`` digits model (calibration/digits.txt, held-out
assets/digits/heldout with labels.csv); (2) b16 at 224 and (3) b16 at 384, random weights,
calibrated on calibration/photos.txt (the real photographs shipped in scikit-image and
scikit-learn) and evaluated on the same photographs plus their mirror images.

ModelOpt needs its own virtualenv (its pins clash with ours); our path and the evaluation run
in the project's environment (ONNX Runtime 1.32; the venv's 1.24 lacks arguments our code uses),
each quantizer in a fresh process (importing ModelOpt monkey-patches onnxruntime.quantization):

    python3 -m venv /tmp/movenv && /tmp/movenv/bin/pip install torch==2.13.0
    echo torch==2.13.0 > /tmp/mo-constraints.txt
    /tmp/movenv/bin/pip install -c /tmp/mo-constraints.txt "nvidia-modelopt[onnx]==0.47.0" \\
        onnxsim safetensors click pillow scikit-image scikit-learn
    /tmp/movenv/bin/pip install --no-deps -e .
    /tmp/movenv/bin/python tools/compare_quantizers.py --main-python "$(command -v python3)" \\
        --work /tmp/quantcmp                     # add --models mini to run one model

``--main-python`` is the interpreter of the project's environment (default: $VIT_DEPLOY_MAIN_PYTHON,
else the first python3 on PATH outside this venv). Results: a markdown table on stdout, and
results.md / results.json in --work (artifacts are exported there once and reused).
Time on a 2-core CPU (measured 2026-11: 22 min for all three): mini 0.5 min, b16@224 ~8 min,
b16@384 ~13 min (20 calibration images, batch 4; 15-70 s per quantization, ModelOpt 1.5-2.5x
ours; the rest is evaluation); about 7 GB of memory in use at the highest reading. The ORT ms/img
column is informational and noisy on a shared machine: TensorRT, not ORT, runs these graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
RESULT = "RESULT-JSON "

MODELS: dict[str, dict[str, Any]] = {
    "mini": {
        "export": ["--model", "mini", "--res", "32", "--num-classes", "10",
                   "--weights", str(REPO / "assets/digits/vit-mini-digits.safetensors")],
        "calib": "calibration/digits.txt", "eval": "assets/digits/heldout", "mirror": False,
        "count": 128, "batch": 8,
    },
    "b16-224": {
        "export": ["--model", "b16", "--res", "224"],
        "calib": "calibration/photos.txt", "eval": "calibration/photos.txt", "mirror": True,
        "count": 32, "batch": 4,
    },
    "b16-384": {
        "export": ["--model", "b16", "--res", "384"],
        "calib": "calibration/photos.txt", "eval": "calibration/photos.txt", "mirror": True,
        "count": 32, "batch": 4,
    },
}
# (label, quantizer, method, extra settings)
VARIANTS = [
    ("ours", "ort", "minmax", {}),
    ("ours", "ort", "entropy", {}),
    ("ours", "ort", "percentile", {}),
    # not the product: our settings plus OpTypesToExcludeOutputQuantization=[MatMul, Gemm, Conv]
    ("ours+no-output-q", "ort", "minmax", {"no_output_q": True}),
    ("ours+no-output-q", "ort", "entropy", {"no_output_q": True}),
    ("modelopt", "modelopt", "max", {}),
    ("modelopt", "modelopt", "entropy", {}),
    # ModelOpt with attention kept in float (disable_mha_qdq); only where attention is eligible for INT8
    ("modelopt-no-mha", "modelopt", "max", {"disable_mha_qdq": True}),
    ("modelopt-no-mha", "modelopt", "entropy", {"disable_mha_qdq": True}),
    ("modelopt-matched", "modelopt", "max", {"op_types": ["MatMul", "Gemm", "Conv"], "gemv_detection": False}),
    ("modelopt-matched", "modelopt", "entropy", {"op_types": ["MatMul", "Gemm", "Conv"], "gemv_detection": False}),
]


# ---------------------------------------------------------------------------------------------
# workers: each runs in a fresh interpreter and prints one RESULT line


def _worker_ours(a: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime

    from vit_deploy.onnx.int8 import quantize_int8

    if a["extra"].get("no_output_q"):
        import onnxruntime.quantization as oq

        from vit_deploy.onnx.int8 import QUANTIZED_OP_TYPES

        original = oq.quantize_static

        def patched(*args: Any, **kwargs: Any) -> Any:
            kwargs["extra_options"] = {**(kwargs.get("extra_options") or {}),
                                       "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)}
            return original(*args, **kwargs)

        oq.quantize_static = patched  # quantize_int8 imports it from the module at call time
    calib = np.load(a["calib"])
    t0 = time.perf_counter()
    policy = quantize_int8(Path(a["fp32"]), Path(a["out"]), calib, method=a["method"],
                           num_tokens=a["num_tokens"], batch=a["batch"], cache_path=None)
    return {"seconds": time.perf_counter() - t0, "settings": policy,
            "runtime": f"onnxruntime {onnxruntime.__version__}"}


def _worker_modelopt(a: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(TOOLS))
    from modelopt_quantize import quantize_with_modelopt

    calib = np.load(a["calib"])
    settings = quantize_with_modelopt(Path(a["fp32"]), Path(a["out"]), calib, a["method"], a["exclude"],
                                      batch=a["batch"], **a["extra"])
    return {"seconds": settings["seconds"], "settings": settings}


def _worker_evaluate(a: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    from vit_deploy.parity.metrics import accuracy, compare_logits

    images = np.load(a["images"])
    labels = np.load(a["labels"]) if a.get("labels") else None

    def run(path: str) -> tuple[np.ndarray, float]:
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        s.run(None, {"images": images[:a["batch"]]})  # warm-up
        t0 = time.perf_counter()
        out = np.concatenate([s.run(None, {"images": images[i:i + a["batch"]]})[0]
                              for i in range(0, len(images), a["batch"])])
        return out, 1000 * (time.perf_counter() - t0) / len(images)

    ref, ref_ms = run(a["fp32"])
    results = {"fp32": {"ms_per_image": ref_ms, "accuracy": accuracy(ref, labels) if labels is not None else None}}
    for key, path in a["candidates"].items():
        try:
            logits, ms = run(path)
        except Exception as e:  # a graph ORT cannot run is a result too
            results[key] = {"error": f"onnxruntime: {type(e).__name__}: {str(e)[:300]}"}
            continue
        m = compare_logits(ref, logits)
        m["ms_per_image"] = ms
        m["accuracy"] = accuracy(logits, labels) if labels is not None else None
        results[key] = m
    return {"runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider", "results": results}


WORKERS = {"ours": _worker_ours, "modelopt": _worker_modelopt, "evaluate": _worker_evaluate}


def _call(python: str, worker: str, args: dict[str, Any], log: Path, timeout: int = 1800) -> dict[str, Any]:
    """Run a worker in a fresh interpreter; its RESULT line, or {"error": ...}."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", worker, "--worker-args", json.dumps(args)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT):
            out = json.loads(line[len(RESULT):])
            out["process_seconds"] = wall
            return out
    tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
    return {"error": f"exit {p.returncode}: {tail[0][:400]}", "log": str(log)}


# ---------------------------------------------------------------------------------------------
# driver


def _find_main_python(given: str | None) -> str:
    candidates = [given, os.environ.get("VIT_DEPLOY_MAIN_PYTHON")]
    venv = Path(sys.prefix).resolve()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d) / "python3"
        if p.is_file() and venv not in p.resolve().parents:
            candidates.append(str(p))
    for c in filter(None, candidates):
        probe = subprocess.run(
            [c, "-c", "import vit_deploy, onnxruntime, importlib.util as u; "
                      "assert u.find_spec('modelopt') is None; print(onnxruntime.__version__)"],
            capture_output=True, text=True, cwd=REPO)
        if probe.returncode == 0:
            return c
    raise SystemExit("no interpreter of the project's environment found (vit_deploy + onnxruntime, no modelopt); "
                     "pass --main-python")


def _export(main_python: str, spec: dict[str, Any], out: Path, log: Path) -> None:
    if (out / "manifest.json").is_file():
        return
    cmd = [main_python, "-c", "import sys; from vit_deploy.cli import main; main(sys.argv[1:])", "export",
           *spec["export"], "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    log.write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"export failed ({' '.join(cmd)}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")


def _load_set(spec: str, prep: Any, count: int | None, work: Path) -> Any:
    """vit_deploy.images.sets.load_image_set, with a fallback for definition files whose paths
    are relative to the repository root instead of to the file."""
    from vit_deploy.errors import UsageError
    from vit_deploy.images.sets import load_image_set

    path = REPO / spec
    try:
        return load_image_set(path, prep, count=count)
    except UsageError as e:
        if not (path.is_file() and "unreadable" in str(e)):
            raise
        fixed = work / f"{path.stem}.abs.txt"
        lines = []
        for line in path.read_text().splitlines():
            parts = line.split(maxsplit=1)
            if len(parts) == 2 and len(parts[0]) == 64 and not parts[1].startswith("pkg:"):
                line = f"{parts[0]}  {(REPO / parts[1]).resolve()}"
            lines.append(line)
        fixed.write_text("\n".join(lines) + "\n")
        print(f"  note: {spec}: paths did not resolve relative to the file; read them relative to the repo root",
              file=sys.stderr)
        return load_image_set(fixed, prep, count=count)


def _matmul_summary(graph_summary: dict[str, Any], attention: list[str], all_matmuls: list[str]) -> dict[str, Any]:
    q = set(graph_summary["matmuls_quantized"])
    att = set(attention)
    head = {n for n in all_matmuls if n.startswith("/head")}
    linear = set(all_matmuls) - att - head
    return {"linear": f"{len(q & linear)}/{len(linear)}", "attention": f"{len(q & att)}/{len(att)}",
            "head": f"{len(q & head)}/{len(head)}"}


def run_model(name: str, main_python: str, work: Path, variants: list[tuple], log: Any) -> dict[str, Any]:
    import onnx

    sys.path.insert(0, str(TOOLS))
    from modelopt_quantize import summarize_qdq

    from vit_deploy.onnx.int8 import ATTENTION_INT8_MAX_TOKENS, attention_matmuls
    from vit_deploy.specs import Preprocessing

    spec = MODELS[name]
    mdir = work / name
    mdir.mkdir(parents=True, exist_ok=True)
    art = mdir / "fp32"
    log(f"[{name}] export")
    _export(main_python, spec, art, mdir / "export.log")
    manifest = json.loads((art / "manifest.json").read_text())
    fp32 = art / manifest["files"][0]["path"]
    m = manifest["model"]
    num_tokens = (m["img_size"] // m["patch_size"]) ** 2 + 1
    prep = Preprocessing.from_dict(manifest["preprocessing"])

    calib = _load_set(spec["calib"], prep, spec["count"], mdir)
    ev = _load_set(spec["eval"], prep, None, mdir)
    eval_images = np.concatenate([ev.images, ev.images[..., ::-1]]) if spec["mirror"] else ev.images
    np.save(mdir / "calib.npy", calib.images)
    np.save(mdir / "eval.npy", np.ascontiguousarray(eval_images))
    if ev.labels is not None:
        np.save(mdir / "labels.npy", ev.labels)
    log(f"[{name}] {num_tokens} tokens; calibration {len(calib.files)} images from {spec['calib']}; "
        f"evaluation {len(eval_images)} images from {spec['eval']}" + (" (+ mirrored)" if spec["mirror"] else ""))

    graph = onnx.load(str(fp32), load_external_data=False)
    attention = attention_matmuls(graph)
    all_matmuls = [n.name for n in graph.graph.node if n.op_type in ("MatMul", "Gemm")]
    exclude = attention if num_tokens > ATTENTION_INT8_MAX_TOKENS else []

    rows, candidates = [], {}
    for label, quantizer, method, extra in variants:
        key = f"{label}-{method}"
        if extra.get("disable_mha_qdq") and exclude:
            continue  # attention is excluded for every quantizer here already
        out = mdir / f"{key}.int8.onnx"
        log(f"[{name}] quantize {key}")
        if quantizer == "ort":
            r = _call(main_python, "ours", {"fp32": str(fp32), "out": str(out), "calib": str(mdir / "calib.npy"),
                                            "method": method, "num_tokens": num_tokens, "batch": spec["batch"],
                                            "extra": extra},
                      mdir / f"{key}.log")
        else:
            r = _call(sys.executable, "modelopt", {"fp32": str(fp32), "out": str(out), "calib": str(mdir / "calib.npy"),
                                                   "method": method, "exclude": exclude, "batch": spec["batch"],
                                                   "extra": extra}, mdir / f"{key}.log")
        row = {"model": name, "key": key, "quantizer": label, "method": method, **r}
        if "error" not in r and out.is_file():
            g = summarize_qdq(onnx.load(str(out), load_external_data=False))
            row["graph"] = g
            row["megabytes"] = sum(f.stat().st_size for f in mdir.glob(f"{key}.int8.onnx*")) / 1e6
            row["matmuls_int8"] = _matmul_summary(g, attention, all_matmuls)
            candidates[key] = str(out)
        rows.append(row)
        log(f"[{name}]   -> " + (r["error"] if "error" in r else f"{r['seconds']:.1f} s"))

    log(f"[{name}] evaluate {len(candidates)} graphs + FP32 on ONNX Runtime CPU")
    ev_args = {"fp32": str(fp32), "candidates": candidates, "images": str(mdir / "eval.npy"), "batch": 8,
               "labels": str(mdir / "labels.npy") if ev.labels is not None else None}
    evaluation = _call(main_python, "evaluate", ev_args, mdir / "evaluate.log", timeout=3600)
    if "error" in evaluation:
        raise SystemExit(f"[{name}] evaluation failed: {evaluation['error']}")
    for row in rows:
        if row["key"] in evaluation["results"]:
            row["eval"] = evaluation["results"][row["key"]]
    return {
        "model": name, "num_tokens": num_tokens, "attention_excluded": bool(exclude),
        "calibration": {"source": spec["calib"], "images": len(calib.files), "batch": spec["batch"],
                        "skipped": len(calib.skipped)},
        "evaluation": {"source": spec["eval"], "images": int(len(eval_images)), "labels": ev.labels is not None,
                       "runtime": evaluation["runtime"]},
        "fp32": evaluation["results"]["fp32"], "rows": rows,
    }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown(models: list[dict[str, Any]]) -> str:
    out = []
    for mres in models:
        fp = mres["fp32"]
        acc = f", FP32 top-1 {100 * fp['accuracy']:.2f} %" if fp.get("accuracy") is not None else ""
        out.append(f"**{mres['model']}** ({mres['num_tokens']} tokens; calibration {mres['calibration']['images']} "
                   f"images, batch {mres['calibration']['batch']}; evaluation {mres['evaluation']['images']} images"
                   f"{acc}; FP32 {fp['ms_per_image']:.1f} ms/img; attention "
                   f"{'excluded' if mres['attention_excluded'] else 'eligible'})\n")
        out.append("| quantizer | calib | Q / DQ nodes | activation Q | weights (DQ, stored) "
                   "| INT8 MatMuls lin / attn / head | DQ also feeds | quant s | rel L2 | worst cos | top-1 agree "
                   "| top-1 acc | ORT ms/img | MB |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in mres["rows"]:
            if "error" in r:
                out.append(f"| {r['quantizer']} | {r['method']} | FAILED: {r['error'][:160]} ||||||||||||")
                continue
            g, mm, e = r["graph"], r["matmuls_int8"], r.get("eval", {})
            others = ", ".join(f"{k} {v}" for k, v in g["dq_consumers_by_op"].items()
                               if k not in ("MatMul", "Gemm", "Conv")) or "-"
            if "error" in e:
                metrics = f"FAILED: {e['error'][:120]} ||||"
            else:
                metrics = (f"{_fmt(e.get('rel_l2'), '.4f')} | {_fmt(e.get('min_cosine'), '.5f')} | "
                           f"{_fmt(100 * e['top1_agreement'], '.1f')} % | "
                           + (f"{100 * e['accuracy']:.2f} %" if e.get("accuracy") is not None else "-")
                           + f" | {e['ms_per_image']:.1f}")
            zp = "" if g["nonzero_zero_points"] == 0 else f" ({g['nonzero_zero_points']} zp!=0)"
            pc = "per-ch" if g["weights_per_tensor"] == 0 else f"{g['weights_per_tensor']} per-tensor"
            out.append(f"| {r['quantizer']} | {r['method']} | {g['quantize_linear']} / {g['dequantize_linear']}{zp} "
                       f"| {g['activation_q']} | {g['weight_dq']} {pc}, {g['weights_stored']} "
                       f"| {mm['linear']} / {mm['attention']} / {mm['head']} | {others} | {r['seconds']:.1f} "
                       f"| {metrics} | {r['megabytes']:.1f} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--worker-args", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--variants", nargs="+", default=None,
                   help="subset of: " + " ".join(f"{lab}-{m}" for lab, _, m, _ in VARIANTS))
    p.add_argument("--work", type=Path, default=Path("/tmp/quantcmp"))
    p.add_argument("--main-python", default=None, help="interpreter of the project's environment")
    p.add_argument("--fresh", action="store_true", help="delete --work first (re-export the artifacts)")
    args = p.parse_args(argv)

    if args.worker:
        result = WORKERS[args.worker](json.loads(args.worker_args))
        print(RESULT + json.dumps(result, default=str))
        return 0

    try:
        import modelopt.onnx.quantization  # noqa: F401
    except ImportError:
        raise SystemExit("run this in the ModelOpt virtualenv (see the module docstring)") from None
    main_python = _find_main_python(args.main_python)
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    variants = [v for v in VARIANTS if args.variants is None or f"{v[0]}-{v[2]}" in args.variants]
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - t0:7.1f}s {msg}", file=sys.stderr, flush=True)

    log(f"main environment: {main_python}; ModelOpt environment: {sys.executable}")
    results = []
    for name in args.models:
        results.append(run_model(name, main_python, args.work, variants, log))
        (args.work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(results)
    (args.work / "results.md").write_text(table)
    print(table)
    log(f"done; {args.work / 'results.md'}, {args.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
