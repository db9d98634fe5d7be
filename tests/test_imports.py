"""Every module imports, and the CLI starts, with tensorrt, modelopt, tritonclient and the scale-out packages
(boto3, ray, pyarrow, kubernetes-validate, PyYAML) absent."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import vit_deploy

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"tensorrt", "tensorrt_bindings", "modelopt", "tritonclient", "pycuda", "cuda",
                                  "boto3", "botocore", "ray", "pyarrow", "kubernetes_validate", "yaml"}:
            raise ImportError(f"{name} is blocked for this test")
sys.meta_path.insert(0, Block())
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=120)


def test_all_modules_import_without_optional_packages():
    modules = [m.name for m in pkgutil.walk_packages(vit_deploy.__path__, "vit_deploy.")]
    assert "vit_deploy.model.checkpoint" in modules
    r = run_python(f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_cli_help_without_optional_packages_and_without_torch_import():
    r = run_python("import sys\nfrom vit_deploy.cli import main\n"
                   "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
                   "assert 'torch' not in sys.modules, 'importing torch for --help makes the CLI slow'\n")
    assert r.returncode == 0, r.stderr
    assert "export" in r.stdout
