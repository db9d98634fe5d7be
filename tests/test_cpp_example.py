"""examples/cpp, compiled with the TensorRT 11 headers and linked against stub libraries, on its error paths.

The TensorRT headers come from ``../shared/third_party/tensorrt-include`` (never copied here),
the CUDA headers and ``libcudart`` from NVIDIA's CUDA 13 wheels, nlohmann/json from the system
(where the compiler finds it by itself: no flag) or its PyPI wheel (``tests/trt/trt_stubs.py``
fetches the wheels once); the example is compiled against both copies, the system one emulated in
a private mount namespace where the package is not installed. The stub ``libnvinfer.so.11``
is built from the symbols the compiled example needs and returns NULL for everything, so no
engine can run: what is tested is every refusal before that point (manifest, version, sha256,
batch) and the null runtime. Each must be one clear line on stderr and exit code 1, never a
crash. The compatibility rules of ``compat.hpp`` are run against the same table as Python's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trt_stubs
from helpers import ROOT

EXAMPLE = ROOT / "examples" / "cpp"
FLAGS = ["-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror"]
STUB_VERSION = "11.4.0"  # what the stub's getInferLibVersion reports (the 11.1 headers add no build number to it)


def _need(found: Path | str) -> Path:
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="module")
def toolchain() -> dict:
    cxx = trt_stubs.tool("g++", "c++", "clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build examples/cpp")
    if trt_stubs.tool("nm") is None:
        pytest.skip("no nm (binutils) to list the symbols the example needs")
    if not (trt_stubs.TRT_INCLUDE / "NvInfer.h").is_file():
        pytest.skip(f"no TensorRT headers at {trt_stubs.TRT_INCLUDE} (../shared/third_party/tensorrt-include)")
    cuda, crt = _need(trt_stubs.cuda_runtime_dir()), _need(trt_stubs.cuda_crt_dir())
    includes = [trt_stubs.TRT_INCLUDE, cuda / "include", crt / "include"]
    flags = [a for p in includes for a in ("-isystem", str(p))]
    return {"cxx": cxx, "cuda": cuda, "headers": flags,
            "isystem": flags + _need_flags(trt_stubs.json_include_flags([cxx]))}


def _need_flags(found: list[str] | str) -> list[str]:
    if isinstance(found, str):
        pytest.skip(found)
    return found


def compile_source(toolchain: dict, source: Path, out: Path) -> Path:
    r = subprocess.run([toolchain["cxx"], *FLAGS, *toolchain["isystem"], f"-I{EXAMPLE}", "-c", str(source),
                        "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{source.name} does not compile cleanly with {' '.join(FLAGS)}:\n{r.stderr[-4000:]}"
    return out


# Where nlohmann-json3-dev is not installed, the "system" case is made real in a private mount
# namespace: /usr/include is overlaid with the wheel's nlohmann/ folder, exactly where the Debian
# package puts it, for the compiler's process alone (nothing outside it sees the change).
OVERLAY = ('mount -t overlay overlay -o "lowerdir=/usr/include,upperdir=$0,workdir=$1" /usr/include '
           '&& shift && exec "$@"')


def _system_json_compiler(cxx: str, tmp_path: Path) -> list[str]:
    """A compiler argv that finds nlohmann/json.hpp in /usr/include, as on a machine with nlohmann-json3-dev."""
    if trt_stubs.compiler_finds([cxx], "nlohmann/json.hpp"):
        return [cxx]  # the package (or another system copy) is installed here
    why = "nlohmann-json3-dev is not installed (apt-get install nlohmann-json3-dev covers this case)"
    if trt_stubs.tool("unshare") is None or os.geteuid() != 0:
        pytest.skip(f"{why}, and emulating it needs root and unshare")
    wheel = _need_flags(trt_stubs.json_include_flags([cxx], source="wheel"))[1]
    upper, work = tmp_path / "overlay-upper", tmp_path / "overlay-work"
    shutil.copytree(Path(wheel) / "nlohmann", upper / "nlohmann")
    work.mkdir()
    compiler = ["unshare", "--mount", "--propagation", "private", "sh", "-c", OVERLAY, str(upper), str(work), cxx]
    r = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"{why}, and /usr/include cannot be overlaid here: {r.stderr.strip()[:200]}")
    return compiler


@pytest.mark.parametrize("json_source", ["system", "wheel"])
def test_example_compiles_with_the_system_or_the_wheel_json_header(toolchain, tmp_path, json_source):
    """Both machines CI may be: with nlohmann-json3-dev (header in /usr/include) and without (the wheel's copy).

    No folder the compiler searches by itself is ever passed to it (a fresh machine with the
    package failed with "stdlib.h: No such file or directory" when /usr/include was).
    """
    compiler = _system_json_compiler(toolchain["cxx"], tmp_path) if json_source == "system" else [toolchain["cxx"]]
    json_flags = _need_flags(trt_stubs.json_include_flags(compiler, source=json_source))
    assert (json_flags == []) == (json_source == "system"), json_flags
    flags = toolchain["headers"] + json_flags
    defaults = set(trt_stubs.default_include_dirs(compiler))
    assert defaults, "the compiler listed no include folders of its own"
    passed = {Path(flags[i + 1]).resolve() for i, flag in enumerate(flags) if flag == "-isystem"}
    assert not passed & defaults, f"system include folders passed to the compiler: {sorted(passed & defaults)}"
    r = subprocess.run([*compiler, *FLAGS, *flags, f"-I{EXAMPLE}", "-fsyntax-only", str(EXAMPLE / "main.cpp")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def vit_infer(toolchain, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("cpp")
    obj = compile_source(toolchain, EXAMPLE / "main.cpp", work / "main.o")
    cudart = toolchain["cuda"] / "lib" / "libcudart.so.13"
    symbols = trt_stubs.needed_symbols(obj, provided=trt_stubs.defined_symbols(cudart))
    assert "createInferRuntime_INTERNAL" in symbols and "getInferLibVersion" in symbols, symbols
    stubs = _need(trt_stubs.build_stubs(work / "stubs", symbols, STUB_VERSION))
    exe = work / "vit_infer"
    r = subprocess.run([toolchain["cxx"], str(obj), "-o", str(exe), f"-L{stubs}", "-lnvinfer", str(cudart)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join([str(stubs), str(cudart.parent)]))
    return {"exe": exe, "env": env}


def stub_engine(graph: Path, dst: Path, **profile: list[int]) -> Path:
    """An engine-kind artifact of ``graph`` whose manifest matches the stub TensorRT, with this profile;
    its plan is not a plan (nothing runs it)."""
    from helpers import engine_manifest_without_plan

    from vit_deploy.artifact import read_manifest, write_manifest

    d = engine_manifest_without_plan(graph, dst)
    m = read_manifest(d)
    m["tensorrt"]["version"] = STUB_VERSION
    m["tensorrt"]["profile"]["images"].update(profile)
    write_manifest(d, m)
    return d


@pytest.fixture
def engine_dir(tiny_artifacts, tmp_path) -> Path:
    return stub_engine(tiny_artifacts["fp16"], tmp_path / "engine", min=[2, 3, 32, 32], opt=[2, 3, 32, 32],
                       max=[4, 3, 32, 32])


def run(vit_infer: dict, directory: Path, batch: int, tmp_path: Path, *extra: str,
        size: tuple[int, int] = (32, 32)) -> tuple[int, str]:
    images = tmp_path / "images.f32"
    np.zeros((batch, 3, *size), np.float32).tofile(images)
    r = subprocess.run([str(vit_infer["exe"]), str(directory), str(images), *extra], capture_output=True, text=True,
                       env=vit_infer["env"], timeout=60)
    assert r.returncode >= 0, f"vit_infer died of signal {-r.returncode}: {r.stderr}"
    return r.returncode, r.stderr


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def test_runtime_unavailable(vit_infer, engine_dir, tmp_path):
    code, err = run(vit_infer, engine_dir, 2, tmp_path)
    assert_one_line_error(code, err, f"TensorRT {STUB_VERSION} could not create a runtime", "nvidia-smi")


def test_manifest_missing(vit_infer, tmp_path):
    code, err = run(vit_infer, tmp_path, 2, tmp_path)
    assert_one_line_error(code, err, "cannot open the artifact's manifest", "manifest.json")


def test_manifest_malformed(vit_infer, engine_dir, tmp_path):
    (engine_dir / "manifest.json").write_text('{"kind": "tensorrt", ')
    code, err = run(vit_infer, engine_dir, 2, tmp_path)
    assert_one_line_error(code, err, "is not valid JSON", "re-create the engine artifact")
    (engine_dir / "manifest.json").write_text('{"kind": "tensorrt"}')
    code, err = run(vit_infer, engine_dir, 2, tmp_path)
    assert_one_line_error(code, err, "is not a vit-deploy engine manifest")
    (engine_dir / "manifest.json").write_text('{"kind": "onnx"}')
    code, err = run(vit_infer, engine_dir, 2, tmp_path)
    assert_one_line_error(code, err, "is not a TensorRT engine artifact")


@pytest.mark.parametrize("recorded", ["11.1.0", "11.4.0.106", "11.4", "10.8.0"])
def test_version_mismatch(vit_infer, engine_dir, tmp_path, recorded):
    from vit_deploy.artifact import read_manifest, write_manifest

    m = read_manifest(engine_dir)
    m["tensorrt"]["version"] = recorded
    write_manifest(engine_dir, m)
    code, err = run(vit_infer, engine_dir, 2, tmp_path)
    expected = f"engine built with TensorRT {recorded}, this program runs TensorRT {STUB_VERSION}"
    assert_one_line_error(code, err, expected)


def test_version_compatible_plan_from_an_older_minor_passes_the_version_check(vit_infer, engine_dir, tmp_path):
    from vit_deploy.artifact import read_manifest, write_manifest

    m = read_manifest(engine_dir)
    m["tensorrt"].update(version="11.1.0", version_compatible=True)
    write_manifest(engine_dir, m)
    code, err = run(vit_infer, engine_dir, 2, tmp_path)
    assert_one_line_error(code, err, "could not create a runtime")  # got past the version check


@pytest.mark.parametrize(("batch", "needle"), [(1, "below the engine's profile minimum 2"),
                                               (5, "above the engine's profile maximum 4")])
def test_batch_outside_the_profile(vit_infer, engine_dir, tmp_path, batch, needle):
    code, err = run(vit_infer, engine_dir, batch, tmp_path)
    assert_one_line_error(code, err, f"batch {batch} is {needle}")


def test_plan_sha256_mismatch(vit_infer, engine_dir, tmp_path):
    plan = next(engine_dir.glob("*.plan"))
    recorded = hashlib.sha256(plan.read_bytes()).hexdigest()
    plan.write_bytes(plan.read_bytes() + b"tampered")
    code, err = run(vit_infer, engine_dir, 2, tmp_path)
    actual = hashlib.sha256(plan.read_bytes()).hexdigest()
    assert_one_line_error(code, err, f"has sha256 {actual} but the manifest records {recorded}")


def test_usage_and_bad_batch_argument(vit_infer, engine_dir, tmp_path):
    r = subprocess.run([str(vit_infer["exe"])], capture_output=True, text=True, env=vit_infer["env"], timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("usage: vit_infer")
    code, err = run(vit_infer, engine_dir, 2, tmp_path, "two")
    assert_one_line_error(code, err, "BATCH must be a whole number")


CASES_DRIVER = r"""
#include <iostream>
#include <string>
#include "compat.hpp"
#include "sha256.hpp"
int main() {  // lines "v BUILT RUNNING FLAG", "c BUILT RUNNING FLAG" or "h TEXT" -> one answer per line
  std::string kind, a, b;
  int flag = 0;
  while (std::cin >> kind) {
    if (kind == "h") { std::cin >> a; std::cout << vit_deploy::sha256_hex(a.data(), a.size()) << "\n"; continue; }
    std::cin >> a >> b >> flag;
    std::cout << (kind == "v" ? vit_deploy::version_allowed(a, b, flag) : vit_deploy::capability_allowed(a, b, flag))
              << "\n";
  }
}
"""


def test_cpp_follows_the_shared_compatibility_table_and_hashes_like_hashlib(toolchain, tmp_path):
    from vit_deploy.trt.plan import compatibility_rules

    source = tmp_path / "cases.cpp"
    source.write_text(CASES_DRIVER)
    obj = compile_source(toolchain, source, tmp_path / "cases.o")
    exe = tmp_path / "cases"
    subprocess.run([toolchain["cxx"], str(obj), "-o", str(exe)], check=True, timeout=120)
    rules = compatibility_rules()
    texts = ["", "abc", "x" * 55, "y" * 56, "z" * 64, "w" * 119, "v" * 1000]
    lines = [f"v {c['built']} {c['running']} {int(c['version_compatible'])}" for c in rules["version_cases"]]
    lines += [f"c {c['built']} {c['running']} {int(c['hardware_compatible'])}" for c in rules["capability_cases"]]
    lines += [f"h {t}" for t in texts if t]
    r = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    answers = r.stdout.split()
    expected = [str(int(c["allowed"])) for c in rules["version_cases"] + rules["capability_cases"]]
    expected += [hashlib.sha256(t.encode()).hexdigest() for t in texts if t]
    assert answers == expected, [(line, a, e) for line, a, e in zip(lines, answers, expected, strict=True) if a != e]
    assert json.dumps(rules["cross_major_pairs"]) == "[[8, 10], [10, 11]]"  # compat.hpp's kCrossMajorPairs
    assert "{{8, 10}, {10, 11}}" in (EXAMPLE / "compat.hpp").read_text()
    assert f"kHardwareCompatibleMinMajor = {rules['hardware_compatible_min_major']};" in (
        EXAMPLE / "compat.hpp").read_text()


@pytest.fixture
def dynamic_engine_dir(tiny_dynamic, tmp_path) -> Path:
    """The --dynamic-res graph's stub engine: profile 16..48, opt 32."""
    return stub_engine(tiny_dynamic["fp16"], tmp_path / "dyn-engine", min=[1, 3, 16, 16], opt=[2, 3, 32, 32],
                       max=[4, 3, 48, 48])


@pytest.mark.parametrize(("size", "arg"), [((32, 32), None), ((16, 48), "16x48"), ((48, 24), "48x24")])
def test_a_dynamic_engine_takes_any_size_in_its_profile(vit_infer, dynamic_engine_dir, tmp_path, size, arg):
    extra = ("2", arg) if arg else ()
    code, err = run(vit_infer, dynamic_engine_dir, 2, tmp_path, *extra, size=size)
    assert_one_line_error(code, err, "could not create a runtime")  # every check before the GPU passed


@pytest.mark.parametrize(("size", "arg", "needle"), [
    ((56, 32), "56x32", "images of 56x32 are outside the engine's profile (manifest): height 16 to 48, width 16 to 48"),
    ((8, 8), "8x8", "images of 8x8 are outside the engine's profile"),
    ((32, 32), "32by32", "HxW must be the image height and width in pixels, e.g. 384x512, not 32by32"),
    ((32, 40), "32x32", "holds 30720 bytes, not float32 [2, 3, 32, 32]"),
])
def test_a_size_outside_the_dynamic_profile_is_one_line(vit_infer, dynamic_engine_dir, tmp_path, size, arg, needle):
    code, err = run(vit_infer, dynamic_engine_dir, 2, tmp_path, "2", arg, size=size)
    assert_one_line_error(code, err, needle)


def test_a_size_for_a_fixed_engine_is_refused(vit_infer, engine_dir, tmp_path):
    code, err = run(vit_infer, engine_dir, 2, tmp_path, "2", "32x32")
    assert_one_line_error(code, err, "could not create a runtime")  # its own size is fine
    code, err = run(vit_infer, engine_dir, 2, tmp_path, "2", "16x16", size=(16, 16))
    assert_one_line_error(code, err, "takes 32x32 images only (a fixed-resolution export)")
