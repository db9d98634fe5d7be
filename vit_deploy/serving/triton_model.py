"""The Triton python-backend model that ``vit-deploy triton-repo --backend python`` copies in as ``model.py``.

It runs the artifact copied beside it with :mod:`vit_deploy.runtime` (ONNX Runtime for graphs,
TensorRT for engines). Tensors cross the stub boundary as DLPack (via torch), not pb_utils'
numpy interop: the stub shipped in the pytriton wheel is built against the NumPy 1.x ABI and
misreads NumPy 2 arrays (wrong values in as_numpy(), "output tensor shape does not match" on
pb_utils.Tensor(name, array)). ``triton_python_backend_utils`` exists only inside Triton's
python backend, so it is imported when Triton calls the model, which keeps this module
importable (and linted, and tested) anywhere.
"""

import json
from pathlib import Path

import numpy as np

from vit_deploy import runtime


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params["threads"]) if params.get("threads") else None
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.runner = runtime.open(Path(__file__).parent / "artifact", threads=threads)

    def execute(self, requests):
        import torch
        import triton_python_backend_utils as pb_utils
        from torch.utils.dlpack import from_dlpack, to_dlpack

        # The dynamic batcher hands over several requests at once: run them as one batch.
        arrays = [from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input_name).to_dlpack()).numpy()
                  for r in requests]
        sizes = [len(a) for a in arrays]
        try:
            logits = np.ascontiguousarray(self.runner.infer(np.concatenate(arrays)), dtype=np.float32)
        except Exception as e:  # e.g. NaN pixels: an error for these requests, the model keeps serving
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))) for _ in requests]
        responses = []
        for part in np.split(logits, np.cumsum(sizes)[:-1]):  # each request's own rows, in order
            tensor = torch.from_numpy(np.ascontiguousarray(part))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack(self.output_name,
                                                                                     to_dlpack(tensor))]))
        return responses

    def finalize(self):
        self.runner.close()
