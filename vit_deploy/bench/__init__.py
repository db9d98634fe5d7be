"""Benchmarks: every backend on one model in one run, against the machine's own limits.

    from vit_deploy.bench import BenchOptions, run_bench
    from vit_deploy.bench.report import format_table, write_outputs

    result = run_bench(BenchOptions(artifacts=(Path("artifacts/b16-224"),), batch_sizes=(1, 8), threads=2))
    print(format_table(result)); write_outputs(result, Path("bench-results"))

Modules:
  backends.py    the row registry (``ROWS``: one entry per way of running the model) and artifact discovery
  flops.py       FLOPs per image from the model config (checked against published figures and torch's counter)
  ceiling.py     matrix-multiply ceilings (FP32, BF16, INT8; GPU: + TF32, FP16) measured now
  workers.py     one process per row, timed on command over a pipe; peak memory per batch size
  run.py         ``BenchOptions`` and ``run_bench``: the round-robin schedule and the statistics
  report.py      table, targets, JSON, Markdown and the PNG plot
  build_cost.py  time and peak memory of export + simplify, FP16 and INT8 conversion (fresh process each)
  cli_command.py the ``bench`` and ``bench-build`` click commands

Importing this package is cheap (no torch, onnxruntime or matplotlib until a function needs them).
"""

from .backends import ROWS, Row
from .flops import model_flops
from .run import BenchOptions, run_bench

__all__ = ["ROWS", "BenchOptions", "Row", "model_flops", "run_bench"]
