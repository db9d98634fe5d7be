"""``vit-deploy build-engine`` as one library call: the precision step, then the engine step.

The precision graph is made (and validated on the CPU) only when the source artifact is not
already at the asked precision; a failing graph stops here (exit 2) and never reaches
TensorRT; a CPU-target INT8 graph is the finished artifact (it runs on OpenVINO, not TensorRT);
everything else goes on to the engine step, which raises EngineUnavailable (exit 3) on a
machine without TensorRT or a GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import EngineUnavailable, UsageError
from ..progress import Progress
from .engine import EngineOptions, build_engine_artifact, check_options, profile_sizes
from .precision import PrecisionOptions, build_precision_artifact, open_parent
from .validate import raise_if_failed


def build(
    graph: PrecisionOptions,
    engine: EngineOptions,
    summary: dict[str, Any],
    progress: Progress | None = None,
    on_graph: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Make the precision graph if needed, then the engine; fills and returns ``summary``.

    Args:
        graph: the precision step's options; ``graph.artifact`` is the source (None: the newest
            export), ``graph.precision`` None builds the engine from the source as it is.
        engine: the engine step's options (its ``artifact`` is set here, to the graph).
        summary: filled as the steps finish, so a caller still has what was made when a step raises.
        progress: where step progress goes (None: silent).
        on_graph: called with the precision step's summary as soon as the graph is made.
    """
    check_options(engine)  # before the slow precision step
    source = open_parent(graph.artifact)
    profile_sizes(engine, source)  # the image sizes of the profile too (the graph keeps the export's range)
    summary.update(artifact=str(source.directory.absolute()), precision=source.precision)
    if graph.precision is not None and graph.precision != source.precision:
        opts = dataclasses.replace(graph, artifact=source.directory.absolute())
        summary.clear()
        summary.update(build_precision_artifact(opts, progress), precision=graph.precision)
        if on_graph is not None:
            on_graph(summary)
        raise_if_failed(summary)  # exit 2: the failing graph stays on disk, nothing goes to TensorRT
    if graph.target == "cpu":
        if graph.precision != "int8":
            raise UsageError("--target cpu makes an INT8 graph for the CPU path: add --int8 --calib ...")
        return summary
    try:
        made = build_engine_artifact(dataclasses.replace(engine, artifact=Path(summary["artifact"])), progress)
    except EngineUnavailable as e:
        summary["engine"] = {"built": False, "reason": str(e)}
        raise
    summary["engine"] = {"built": True, **made}
    return summary
