"""Serving artifacts with the Triton Inference Server: ``vit-deploy triton-repo``, ``serve``, ``triton-load``.

- :mod:`.repository` writes a Triton model repository (``tensorrt_plan``, ``onnxruntime_onnx`` or a
  ``python`` backend model that runs the artifact through :mod:`vit_deploy.runtime`), every
  ``config.pbtxt`` built as Triton's own ``ModelConfig`` protobuf and re-parsed to validate it;
- :mod:`.server` finds and runs a real ``tritonserver`` on loopback (a context manager);
- :mod:`.client` sends preprocessed images over HTTP or gRPC and returns logits / top-k;
- :mod:`.load` is the load test: N concurrent clients x M requests, latency, throughput, batching.

Needs ``pip install vit-deploy[serve]`` (tritonclient; the pytriton wheel carries a server binary).
"""
