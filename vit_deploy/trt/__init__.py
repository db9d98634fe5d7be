"""TensorRT: the only package that imports ``tensorrt``, always lazily, inside functions.

This version decides whether an engine can be built on this machine; the engine build and
runner themselves are the next milestone (issue 4). TensorRT cannot be installed on a CPU-only
machine (its wheels need CUDA), so everything before the build (the precision graphs) is
produced and validated on the CPU, and the message below says where to finish.
"""

from __future__ import annotations


def unavailable_reason() -> str | None:
    """Why no TensorRT engine can be built here, or None when TensorRT and a GPU are present."""
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT is not installed here (it needs a CUDA GPU host: pip install tensorrt-cu12)"
    try:
        # Builder creation needs a CUDA device; this checks the GPU without importing torch.
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except (RuntimeError, TypeError) as e:
        return f"TensorRT {trt.__version__} cannot start ({e}); is a CUDA GPU visible?"
    if builder is None:
        return f"TensorRT {trt.__version__} found no usable CUDA GPU"
    return f"TensorRT {trt.__version__} is available, but this vit-deploy version stops at the precision graph"
