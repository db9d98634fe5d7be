"""The Triton python-backend model that ``vit-deploy triton-repo --backend python`` copies in as ``model.py``.

It runs the artifact copied beside it with :mod:`vit_deploy.runtime` (ONNX Runtime for graphs,
TensorRT for engines). Tensors cross the stub boundary as DLPack (via torch), not pb_utils'
numpy interop: the stub shipped in the pytriton wheel is built against the NumPy 1.x ABI and
misreads NumPy 2 arrays (wrong values in as_numpy(), "output tensor shape does not match" on
pb_utils.Tensor(name, array)). ``triton_python_backend_utils`` exists only inside Triton's
python backend, so it is imported when Triton calls the model, which keeps this module
importable (and linted, and tested) anywhere.

The dynamic batcher hands over several clients' requests at once. Each is checked on its own
and answered on its own (:func:`answer_each`): one client's NaN pixels get that client an error,
and the requests batched with it still get their logits. A dynamic-resolution model's config
declares height and width -1; each request's size is checked here against the artifact's range
(a size outside it, or off the patch grid, is that request's error, naming the nearest valid sizes).
"""

import json
from pathlib import Path

import numpy as np

from vit_deploy import runtime
from vit_deploy.runtime.base import check_images


def answer_each(runner, arrays):
    """One answer per request: its logits (float32 [n, classes]) or the exception that refuses it.

    ``arrays`` holds each request's images, or the exception met while reading them. Valid
    requests run as one batch; should that batch still fail, each runs alone, so an error is
    only ever reported to the request that causes it.
    """
    answers = list(arrays)
    good = []
    for i, images in enumerate(arrays):
        if isinstance(images, Exception):
            continue
        try:
            check_images(images, runner.chw, "this request's images", getattr(runner, "size_range", None))
            good.append(i)
        except Exception as e:  # noqa: BLE001 - the error is this request's answer
            answers[i] = e
    if not good:
        return answers
    try:
        batch = [arrays[i] for i in good]
        # one array when every request has one size; a list (run one size at a time, rows in order) when a
        # dynamic-resolution model got several
        same = len({a.shape[1:] for a in batch}) == 1
        logits = np.asarray(runner.infer(np.concatenate(batch) if same else batch), dtype=np.float32)
        parts = np.split(logits, np.cumsum([len(arrays[i]) for i in good])[:-1])  # each request's rows, in order
    except Exception:  # noqa: BLE001 - not any one request's fault yet: find out which, one by one
        parts = []
        for i in good:
            try:
                parts.append(np.asarray(runner.infer(arrays[i]), dtype=np.float32))
            except Exception as e:  # noqa: BLE001
                parts.append(e)
    for i, part in zip(good, parts, strict=True):
        answers[i] = part
    return answers


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params["threads"]) if params.get("threads") else None
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.runner = runtime.open(Path(__file__).parent / "artifact", threads=threads)

    def _images(self, request, pb_utils, from_dlpack):
        try:
            return from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name).to_dlpack()).numpy()
        except Exception as e:  # noqa: BLE001 - e.g. a dtype DLPack cannot carry: this request's answer
            return e

    def execute(self, requests):
        import torch
        import triton_python_backend_utils as pb_utils
        from torch.utils.dlpack import from_dlpack, to_dlpack

        responses = []
        for answer in answer_each(self.runner, [self._images(r, pb_utils, from_dlpack) for r in requests]):
            if isinstance(answer, Exception):  # the model keeps serving; only this client sees the error
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(answer))))
            else:
                tensor = torch.from_numpy(np.ascontiguousarray(answer))
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack(self.output_name,
                                                                                         to_dlpack(tensor))]))
        return responses

    def finalize(self):
        self.runner.close()
