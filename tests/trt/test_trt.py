"""vit_deploy.trt without a GPU: compatibility rules, inspector JSON counting (on samples from
NVIDIA's documentation), parser-error formatting, and TensorRT's failures as typed errors.
"""

from __future__ import annotations

import sys

import pytest

from vit_deploy.errors import ArtifactError, EngineUnavailable, UsageError
from vit_deploy.trt import LogCollector
from vit_deploy.trt.build import check_batches, format_parser_errors, profile_shapes
from vit_deploy.trt.inspector import io_tensors, layer_precision, layer_precision_counts, summarize, tensor_precision
from vit_deploy.trt.plan import capability_allowed, check_compatible, compatibility_problem, version_allowed

# --- compatibility rules ---------------------------------------------------------------------

BUILT = {"version": "11.0.0", "compute_capability": "8.9", "gpu": "NVIDIA L4"}
H100_11_1 = {"version": "11.1.0", "compute_capability": "9.0", "gpu": "NVIDIA H100"}


def test_incompatible_engine_message_names_both_sides():
    problem = compatibility_problem(BUILT, H100_11_1)
    assert problem.startswith(
        "engine built with TensorRT 11.0.0 for compute capability 8.9 (NVIDIA L4); "
        "this machine has TensorRT 11.1.0 and compute capability 9.0 (NVIDIA H100)"
    )
    assert "version" in problem and "compute capability it was built for" in problem


def test_same_version_and_gpu_is_compatible():
    assert compatibility_problem(BUILT, dict(BUILT)) is None
    assert compatibility_problem({**BUILT, "version": "11.0.0.9"}, {**BUILT, "version": "11.0.0.9"}) is None


def test_version_and_capability_are_each_enforced():
    assert "TensorRT version that built it" in compatibility_problem(BUILT, {**BUILT, "version": "11.0.1"})
    assert not version_allowed("11.0.0.5", "11.0.0.6", version_compatible=False)  # build numbers count too
    only_cc = compatibility_problem(BUILT, {**BUILT, "compute_capability": "8.6", "gpu": "NVIDIA A10"})
    assert "8.9 (NVIDIA L4)" in only_cc and "8.6 (NVIDIA A10)" in only_cc and "TensorRT version" not in only_cc


def test_hardware_compatible_engines_run_on_any_ampere_or_newer_gpu():
    hc = {**BUILT, "hardware_compatible": True}
    assert compatibility_problem(hc, {**BUILT, "compute_capability": "9.0", "gpu": "NVIDIA H100"}) is None
    assert compatibility_problem(hc, {**BUILT, "compute_capability": "8.0", "gpu": "NVIDIA A100"}) is None
    problem = compatibility_problem(hc, {**BUILT, "compute_capability": "7.5", "gpu": "Tesla T4"})
    assert "Ampere or newer" in problem and "7.5 (Tesla T4)" in problem
    assert capability_allowed("8.6", "12.0", hardware_compatible=True)
    assert not capability_allowed("8.6", "12.0", hardware_compatible=False)


def test_version_compatible_engines_run_on_later_runtimes_only():
    vc = {**BUILT, "version_compatible": True}
    assert compatibility_problem(vc, {**BUILT, "version": "11.1.0"}) is None
    assert compatibility_problem(vc, {**BUILT, "version": "11.4.1.2"}) is None
    older = compatibility_problem({**vc, "version": "11.1.0"}, {**BUILT, "version": "11.0.0"})
    assert "same or a later TensorRT" in older
    # across majors only the documented pairs: 10 -> 11 and 8 -> 10
    assert version_allowed("10.8.0", "11.0.0", version_compatible=True)
    assert version_allowed("8.6.1", "10.0.0", version_compatible=True)
    assert not version_allowed("8.6.1", "11.0.0", version_compatible=True)
    # version compatibility does not relax the GPU check
    both = compatibility_problem(vc, {**BUILT, "version": "11.1.0", "compute_capability": "9.0"})
    assert both and "compute capability it was built for" in both and "TensorRT version" not in both


def test_check_compatible_raises_with_the_rebuild_command(monkeypatch, tmp_path):
    import vit_deploy.trt.plan as trt_engine

    monkeypatch.setattr(trt_engine, "current_facts", lambda: dict(H100_11_1))
    with pytest.raises(ArtifactError) as e:
        check_compatible(BUILT, rebuild_from=tmp_path / "graph")
    hint = f"rebuild with vit-deploy build-engine {tmp_path / 'graph'} on this machine"
    assert str(e.value).endswith(hint)
    monkeypatch.setattr(trt_engine, "current_facts", lambda: dict(BUILT))
    check_compatible(BUILT)


def test_check_compatible_without_tensorrt_is_engine_unavailable(monkeypatch):
    import vit_deploy.trt.probe

    monkeypatch.setattr(vit_deploy.trt.probe, "unavailable_reason", lambda: "TensorRT is not installed here")
    with pytest.raises(EngineUnavailable, match="TensorRT is not installed here"):
        check_compatible(BUILT)


# --- inspector JSON --------------------------------------------------------------------------

# TensorRT Developer Guide, "Engine Inspector", the kDETAILED getLayerInformation() example
# (10.x schema; here as mirrored in HeKun-NVIDIA/TensorRT-Developer_Guide_in_Chinese), trimmed.
DOC_INT8_CONV = {
    "Name": "node_of_gpu_0/res4_0_branch2a_1 + node_of_gpu_0/res4_0_branch2a_bn_1 + node_of_gpu_0/res4_0_branch2a_bn_2",
    "LayerType": "CaskConvolution",
    "Inputs": [{"Name": "gpu_0/res3_3_branch2c_bn_3", "Dimensions": [16, 512, 28, 28],
                "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}],
    "Outputs": [{"Name": "gpu_0/res4_0_branch2a_bn_2", "Dimensions": [16, 256, 28, 28],
                 "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}],
    "ParameterType": "Convolution",
    "TacticValue": "0x11bde0e1d9f2f35d",
}
# NVIDIA/TensorRT issue #3876 (a user's FP16 engine, 10.x schema), one layer.
ISSUE_FP16_CONV = {
    "Name": "/model.2/cv1/conv/Conv + /model.2/cv1/act/Relu",
    "LayerType": "CaskConvolution",
    "Inputs": [{"Name": "/model.1/act/Relu_output_0", "Location": "Device", "Dimensions": [1, 50, 160, 160],
                "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
    "Outputs": [{"Name": "Reformatted Output Tensor 0 to /model.2/cv1/conv/Conv + /model.2/cv1/act/Relu",
                 "Location": "Device", "Dimensions": [1, 25, 160, 160],
                 "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
}
# A dynamic-shape layer as 10.x prints it when no execution context is attached.
DYNAMIC_NOOP = {
    "Name": "(Unnamed Layer* 0) [Shuffle]", "LayerType": "NoOp",
    "Inputs": [{"Name": "foo0", "Location": "Device", "Dimensions": [-1, 25088],
                "Format/Datatype": "N/A due to dynamic shapes"}],
    "Outputs": [{"Name": "(Unnamed Layer* 0) [Shuffle]_output", "Location": "Device", "Dimensions": [-1, 128, 14, 14],
                 "Format/Datatype": "N/A due to dynamic shapes"}],
}
# TensorRT 11 engine information, "I/O Tensors" exactly as the IEngineInspector migration page shows it.
ENGINE_INFO_11 = {
    "I/O Tensors": [
        {"Name": "input_0", "IOMode": "Input", "DataType": "Float", "Dimensions": [1, 3, 224, 224],
         "Location": "Device", "IsShapeInferenceIO": False,
         "ProfileInfo": [{"MinShape": [1, 3, 224, 224], "OptShape": [1, 3, 224, 224], "MaxShape": [1, 3, 224, 224],
                          "Format": "Row major linear FP32 format (kLINEAR)"}]},
        {"Name": "output_0", "IOMode": "Output", "DataType": "Float", "Dimensions": [1, 1000],
         "Location": "Device", "IsShapeInferenceIO": False},
    ]
}
# Layers in the 11.x split schema, as NVIDIA's own 11.x tooling reads them: the trt-perf-analysis
# schema (NVIDIA/TensorRT, commit a892d222, .agents/skills/trt-perf-analysis/schemas/analyze-data.schema.json)
# gives a layer tensor "Name" (required), "Datatype", "Dimensions", "Format", "StrideOrder", "Strides"; its
# report (report_template/app.js) looks the "Datatype" value up case-insensitively among "float", "half",
# "int8", "bfloat16", ... Only the required field and the type are given where the test is about the type.
LAYER_11_INT8_GEMM = {
    "Name": "/blocks.0/attn/qkv/MatMul", "LayerType": "gemm",
    "Inputs": [{"Name": "x_q", "Datatype": "Int8", "Dimensions": [2, 65, 32]},
               {"Name": "w_q", "Datatype": "Int8", "Dimensions": [32, 96]}],
    "Outputs": [{"Name": "qkv", "Datatype": "Half", "Dimensions": [2, 65, 96]}],
}
LAYER_11_FP32_LN = {
    "Name": "/blocks.0/norm1/LayerNormalization", "LayerType": "Normalization",
    "Inputs": [{"Name": "x", "Datatype": "Float", "Dimensions": [2, 65, 32], "StrideOrder": [2, 1, 0]}],
    "Outputs": [{"Name": "y", "Datatype": "Float", "Dimensions": [2, 65, 32], "Strides": [2080, 32, 1]}],
}


def test_tensor_precision_reads_the_11x_datatype_key_in_any_case_and_with_the_format_prefix():
    """Audit point 1: "Datatype" (NVIDIA's 11.x tooling), never read before; "DataType"; "Format/Datatype"."""
    assert tensor_precision(LAYER_11_INT8_GEMM["Inputs"][0]) == "int8"
    assert tensor_precision(LAYER_11_INT8_GEMM["Outputs"][0]) == "fp16"
    assert tensor_precision(LAYER_11_FP32_LN["Inputs"][0]) == "fp32"
    for key in ("Datatype", "DataType", "datatype", "DATATYPE", "Format/Datatype", "format/datatype"):
        assert tensor_precision({"Name": "t", key: "half"}) == "fp16", key
    # the type key wins over a format string that would say otherwise; "Format" is only the fallback
    assert tensor_precision({"Name": "t", "Datatype": "Int8", "Format": "Row major linear FP32 format"}) == "int8"
    assert tensor_precision({"Name": "t", "Format": "Row major linear FP16 format"}) == "fp16"
    assert tensor_precision({"Name": "t"}) == "unknown"


def test_tensor_precision_reads_both_inspector_schemas():
    assert tensor_precision(DOC_INT8_CONV["Inputs"][0]) == "int8"
    assert tensor_precision(ISSUE_FP16_CONV["Inputs"][0]) == "fp16"
    assert tensor_precision(DYNAMIC_NOOP["Inputs"][0]) == "unknown"
    assert tensor_precision(ENGINE_INFO_11["I/O Tensors"][0]) == "fp32"
    assert tensor_precision({"DataType": "Half"}) == "fp16"
    assert tensor_precision({"DataType": "BFloat16"}) == "bf16"
    assert tensor_precision({"DataType": "FP8"}) == "fp8"
    assert tensor_precision({"DataType": "UInt8"}) == "uint8"
    assert tensor_precision({"Format/Datatype": "Row major linear FP32"}) == "fp32"
    assert tensor_precision({"DataType": "Int32"}) == "int32"


def test_layer_precision_is_the_lowest_input_precision():
    assert layer_precision(LAYER_11_INT8_GEMM) == "int8"
    assert layer_precision(LAYER_11_FP32_LN) == "fp32"
    assert layer_precision("just a layer name") == "unknown"
    dq = {"Inputs": [{"Datatype": "Int8"}, {"Datatype": "Float"}], "Outputs": [{"Datatype": "Float"}]}
    assert layer_precision(dq) == "int8"
    outputs_only = {"Inputs": [], "Outputs": [{"Datatype": "Half"}]}
    assert layer_precision(outputs_only) == "fp16"


def test_layer_precision_counts_on_documented_samples():
    layers = [DOC_INT8_CONV, ISSUE_FP16_CONV, DYNAMIC_NOOP, LAYER_11_INT8_GEMM, LAYER_11_FP32_LN, "name only"]
    counts = layer_precision_counts(layers)
    assert counts == {"int8": 2, "fp16": 1, "fp32": 1, "unknown": 2}
    assert list(counts) == ["int8", "fp16", "fp32", "unknown"]  # most reduced first
    assert layer_precision_counts([]) == {}


def test_summary_reads_io_tensors_of_either_version():
    s = summarize(ENGINE_INFO_11, [LAYER_11_INT8_GEMM, LAYER_11_FP32_LN])
    assert [t["Name"] for t in s["io_tensors"]] == ["input_0", "output_0"] and s["num_layers"] == 2
    assert s["layers"][0]["inputs"][0] == {"name": "x_q", "precision": "int8", "format": None,
                                           "dimensions": [2, 65, 32]}
    assert s["layer_types"] == {"gemm": 1, "Normalization": 1}
    assert io_tensors({"Bindings": ["input_0", "output_0"]}) == [{"Name": "input_0"}, {"Name": "output_0"}]
    # the summary's own layer briefs count the same as the raw inspector layers
    assert layer_precision_counts(s["layers"]) == layer_precision_counts([LAYER_11_INT8_GEMM, LAYER_11_FP32_LN])


def test_fused_attention_is_read_from_layer_and_tactic_names():
    """Layer shapes as reported for TensorRT 10/11 engines (NVIDIA/TensorRT #4397: a Myelin "kgen" layer
    "_gemm_mha_v2_myl0_3" with tactic "_gemm_mha_v2_0x..."; #4516: an FP8 MHA that reads Half)."""
    from vit_deploy.trt.inspector import fused_attention

    fused_fp8 = {"Name": "_gemm_mha_v2_myl0_3", "LayerType": "kgen", "TacticName": "_gemm_mha_v2_0x5e1f",
                 "Inputs": [{"Datatype": "FP8"}, {"Datatype": "FP8"}], "Outputs": [{"Datatype": "Half"}]}
    fused_half = {"Name": "{ForeignNode[/blocks.0/attn/MatMul...]}", "TacticName": "sm90_fmha_fwd_kernel",
                  "Inputs": [{"Datatype": "Half"}], "Outputs": [{"Datatype": "Half"}]}
    unfused = {"Name": "/blocks.0/attn/MatMul", "LayerType": "gemm", "TacticName": "sm90_xmma_gemm_f16f16_f16f32",
               "Inputs": [{"Datatype": "Half"}], "Outputs": [{"Datatype": "Half"}]}
    softmax = {"Name": "/blocks.0/attn/Softmax", "LayerType": "kgen", "TacticName": "", "Inputs": [], "Outputs": []}
    assert [f["precision"] for f in fused_attention([fused_fp8, fused_half, unfused, softmax, LAYER_11_FP32_LN])] \
        == ["fp8", "fp16"]
    assert fused_attention([unfused, softmax, "schema"]) == []  # a name like "schema" is not an MHA kernel
    s = summarize(ENGINE_INFO_11, [fused_fp8, unfused])
    assert s["fused_attention"] == {"layers": 1, "precisions": {"fp8": 1}, "names": ["_gemm_mha_v2_myl0_3"]}


# --- build helpers ---------------------------------------------------------------------------


def test_parser_errors_are_all_listed_with_their_nodes():
    records = [
        {"code": "UNSUPPORTED_NODE", "desc": "No importer registered for op: NoSuchOp", "node": 4,
         "node_name": "mystery", "node_operator": "NoSuchOp"},
        {"code": "INVALID_GRAPH", "desc": "graph has no outputs", "node": -1, "node_name": "", "node_operator": ""},
    ]
    text = format_parser_errors("/a/model.onnx", records, ["[graph.cpp] failed"])
    lines = text.splitlines()
    assert lines[0] == "TensorRT could not parse /a/model.onnx: 2 parser error(s)"
    assert lines[1] == "  1. node 4 'mystery' (NoSuchOp): No importer registered for op: NoSuchOp [UNSUPPORTED_NODE]"
    assert lines[2] == "  2. graph: graph has no outputs [INVALID_GRAPH]"
    assert "[graph.cpp] failed" in text and "then run build-engine again" in lines[-1]


def test_log_collector_keeps_errors_and_warnings_only():
    log = LogCollector()
    log.add("VERBOSE", "noise")
    log.add("INFO", "more noise")
    assert log.explain() == "TensorRT logged no error"
    log.add("WARNING", "weights are fp16 ")
    assert log.explain() == "weights are fp16"
    log.add("ERROR", "out of memory")
    log.add("INTERNAL_ERROR", "assertion failed")
    assert log.errors() == ["out of memory", "assertion failed"] and log.warnings() == ["weights are fp16"]
    assert log.explain() == "out of memory; assertion failed"
    log.clear()
    assert log.records == []


def test_profile_shapes_and_batch_checks():
    assert profile_shapes("images", (3, 384, 384), 1, 8, 64) == {
        "images": {"min": [1, 3, 384, 384], "opt": [8, 3, 384, 384], "max": [64, 3, 384, 384]}
    }
    for bad in ((0, 1, 2), (2, 1, 4), (1, 8, 4)):
        with pytest.raises(UsageError, match="1 <= --min-batch"):
            check_batches(*bad)


# --- audit point 2: TensorRT's failures become our typed errors, in one line -------------------


class _NullFactory:
    """What the real bindings do when TensorRT's factory returns nullptr (seen with stub libraries)."""

    __version__ = "11.4.0.106"

    def __init__(self) -> None:
        self.builders = 0

        def refuse(*args, **kwargs):
            self.builders += 1
            raise TypeError("pybind11::init(): factory function returned nullptr")

        self.Builder = self.Runtime = refuse

        class Logger:
            ERROR = "ERROR"

            def __init__(self, *args):
                pass

        self.Logger = Logger


@pytest.fixture
def fresh_probe():
    """Forget the cached TensorRT probe before and after the test."""
    from vit_deploy.trt import probe

    def clear():
        probe.unavailable_reason.cache_clear()
        probe.probe_tensorrt.cache_clear()


    clear()
    yield
    clear()


def test_builder_and_runtime_nullptr_become_engine_unavailable_in_one_line():
    from vit_deploy.trt.build import create_builder
    from vit_deploy.trt.plan import create_runtime

    fake = _NullFactory()
    for create in (create_builder, create_runtime):
        with pytest.raises(EngineUnavailable) as e:
            create(fake, logger=None)
        message = str(e.value)
        assert "\n" not in message and "factory function returned nullptr" in message
        assert "TensorRT 11.4.0.106" in message and "nvidia-smi" in message and e.value.exit_code == 3


def test_unavailable_reason_is_computed_once(monkeypatch, fresh_probe):
    """Audit point 2: a Builder per question cost a CUDA context each time (up to four per runner)."""
    fake = _NullFactory()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    first = unavailable_reason_now()
    assert "factory function returned nullptr" in first and "\n" not in first
    for _ in range(4):
        assert unavailable_reason_now() == first
    assert fake.builders == 1


def unavailable_reason_now():
    import vit_deploy.trt.probe

    return vit_deploy.trt.probe.unavailable_reason()


def test_missing_library_is_named_not_called_not_installed(monkeypatch, fresh_probe):
    """Audit point 2: bindings installed, libnvinfer.so.11 absent: say which library and how to get it."""
    import vit_deploy.trt.probe
    from vit_deploy.trt import missing_library

    error = ImportError("libnvinfer.so.11: cannot open shared object file: No such file or directory")
    assert missing_library(error) == "libnvinfer.so.11"
    assert missing_library(ImportError("No module named 'tensorrt'")) is None

    def broken():
        raise error

    monkeypatch.setattr(vit_deploy.trt, "import_tensorrt", broken)
    reason = unavailable_reason_now()
    assert "libnvinfer.so.11" in reason and "not installed here" not in reason, reason
    assert "pip install" in reason and "\n" not in reason


def test_no_tensorrt_at_all_says_not_installed_with_the_command(monkeypatch, fresh_probe):
    import vit_deploy.trt.probe

    def absent():
        raise ModuleNotFoundError("No module named 'tensorrt_bindings'", name="tensorrt_bindings")

    monkeypatch.setattr(vit_deploy.trt, "import_tensorrt", absent)
    reason = unavailable_reason_now()
    assert reason.startswith("TensorRT is not installed here") and "pip install tensorrt-cu1" in reason


# --- one table of compatibility rules for Python and C++ (examples/cpp/compat.hpp) -------------


def test_python_follows_the_shared_compatibility_table():
    from vit_deploy.trt.plan import compatibility_rules

    rules = compatibility_rules()
    for case in rules["version_cases"]:
        assert version_allowed(case["built"], case["running"], case["version_compatible"]) is case["allowed"], case
    for case in rules["capability_cases"]:
        assert capability_allowed(case["built"], case["running"], case["hardware_compatible"]) is case["allowed"], case
