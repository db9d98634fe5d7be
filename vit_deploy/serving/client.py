"""A small Triton client for vit-deploy models, over HTTP or gRPC (tritonclient).

    client = TritonClient("127.0.0.1:8000", "vit-b16-224")            # protocol="grpc" with the gRPC port
    logits = client.infer(images)                                      # float32 [batch, 3, H, W]
    top = client.predict(["cat.jpg"], top_k=5)                         # the manifest's preprocessing

The model's input/output names, its shape and the preprocessing come from the server's model
config (``triton-repo`` stores the manifest's preprocessing in a config parameter), so a client
needs no artifact on its machine. A dynamic-resolution model (input ``[3, -1, -1]``) also carries
its range there: ``sizes``; ``predict`` then sends each photo at its own size (``predict``'s policy:
aspect kept, shorter side to the native size, rounded to the patch grid), and ``input_dims`` gives
the native size. One client object is not shared between threads; make one each.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..errors import UsageError
from ..specs import Preprocessing, ResolutionRange
from .repository import PREPROCESSING_PARAM, SIZES_PARAM, check_model_name

PROTOCOLS = ("http", "grpc")


class InferError(UsageError):
    """The server refused or failed a request (its message is kept)."""


def _module(protocol: str):
    try:
        if protocol == "http":
            import tritonclient.http as module
        elif protocol == "grpc":
            import tritonclient.grpc as module
        else:
            raise UsageError(f"unknown protocol {protocol!r}; choose http or grpc")
    except ImportError as e:
        raise UsageError(f"the Triton client needs tritonclient ({e}); pip install 'vit-deploy[serve]'") from e
    return module


def check_url(url: str) -> str:
    """``url`` if it is HOST:PORT, as tritonclient wants it; a UsageError with an example otherwise.

    Checked here because tritonclient's HTTP client, given a scheme or a bad port, fails in its
    constructor and then prints a traceback from its ``__del__``.
    """
    host, _, port = url.rpartition(":")
    if "://" in url or "/" in url or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--url {url!r} is not HOST:PORT; give e.g. 127.0.0.1:8000 (no http://; "
                         "the gRPC port, e.g. 8001, for --protocol grpc)")
    return url


class TritonClient:
    def __init__(self, url: str, model: str, *, protocol: str = "http", version: str = "",
                 timeout: float = 60.0) -> None:
        self.protocol, self.model, self.version = protocol, check_model_name(model), version
        self._tc = _module(protocol)
        from tritonclient.utils import InferenceServerException

        self._exc = InferenceServerException
        check_url(url)
        try:
            if protocol == "http":
                self.client = self._tc.InferenceServerClient(url, network_timeout=timeout, connection_timeout=timeout)
                config = self.client.get_model_config(model, version)
            else:
                self.client = self._tc.InferenceServerClient(url)
                config = self.client.get_model_config(model, version, as_json=True)["config"]
        except (InferenceServerException, OSError, ValueError) as e:  # refused, unknown host, malformed URL, ...
            reason = e.message() if isinstance(e, InferenceServerException) else str(e) or type(e).__name__
            raise InferError(f"cannot reach model {model!r} at {url} over {protocol} ({reason}); start a server "
                             "with vit-deploy serve REPOSITORY, or pass --url HOST:PORT of one that serves this "
                             "model (its gRPC port for --protocol grpc)") from e
        self.timeout = timeout
        self.config = config
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        param = config.get("parameters", {}).get(PREPROCESSING_PARAM)
        self.preprocessing = Preprocessing.from_dict(json.loads(param["string_value"])) if param else None
        sizes = config.get("parameters", {}).get(SIZES_PARAM)
        self.sizes = ResolutionRange.from_dict(json.loads(sizes["string_value"])) if sizes else None
        # the native size where the model takes any (-1): what a load test sends
        native = self.sizes.native if self.sizes else (self.preprocessing.crop if self.preprocessing else 0)
        self.input_dims = tuple(int(d) if int(d) >= 0 else native for d in config["input"][0]["dims"])

    def infer(self, images: np.ndarray, datatype: str = "FP32") -> np.ndarray:
        """Logits for one batch; the server's error (wrong shape, dtype, ...) becomes InferError."""
        tc = self._tc
        inp = tc.InferInput(self.input_name, list(images.shape), datatype)
        if self.protocol == "http":
            inp.set_data_from_numpy(images, binary_data=True)
            out = [tc.InferRequestedOutput(self.output_name, binary_data=True)]
            kwargs: dict[str, Any] = {"timeout": None}
        else:
            inp.set_data_from_numpy(images)
            out = [tc.InferRequestedOutput(self.output_name)]
            kwargs = {"client_timeout": self.timeout}
        try:
            result = self.client.infer(self.model, [inp], model_version=self.version, outputs=out, **kwargs)
        except self._exc as e:
            raise InferError(f"the server refused the request: {e.message()}") from e
        return result.as_numpy(self.output_name)

    def predict(self, paths: list[str | os.PathLike[str]], *, top_k: int = 5,
                labels_file: str | None = None) -> list[dict[str, Any]]:
        """Top-k classes per image file, through the manifest's preprocessing and a softmax."""
        from ..images.decode import load_batch
        from ..predict import class_names, softmax

        if self.preprocessing is None:
            raise UsageError(f"model {self.model} has no {PREPROCESSING_PARAM} parameter; make its repository with "
                             "vit-deploy triton-repo")
        if self.sizes is None:
            logits = self.infer(load_batch(paths, self.preprocessing))
        else:  # each photo at its own size: one request each
            logits = np.concatenate([self.infer(_fitted(path, self.preprocessing, self.sizes)) for path in paths])
        probs = softmax(logits.astype(np.float64))
        names = class_names(probs.shape[1], labels_file)
        out = []
        for path, p in zip(paths, probs, strict=True):
            idx = np.argsort(-p)[:top_k]
            out.append({"image": str(path), "top": [{"class": int(i), "name": names[i], "prob": float(p[i])}
                                                    for i in idx]})
        return out

    def statistics(self) -> dict[str, Any]:
        """The model's inference statistics (inference_count vs execution_count shows batching)."""
        try:
            if self.protocol == "http":
                stats = self.client.get_inference_statistics(self.model, self.version)
            else:
                stats = self.client.get_inference_statistics(self.model, self.version, as_json=True)
        except (self._exc, OSError) as e:  # e.g. the server stopped during a load test
            raise InferError(f"cannot read model {self.model!r}'s statistics ({e}); check the server still runs") from e
        return stats["model_stats"][0]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fitted(path: str | os.PathLike[str], prep: Preprocessing, sizes: ResolutionRange) -> np.ndarray:
    """One photo as [1, 3, H, W] at the size predict's policy gives it (the native shorter side)."""
    from ..images.decode import load_rgb, resize_to
    from ..images.sizes import fit_size

    rgb = load_rgb(path)
    h, w, _ = fit_size(rgb.shape[0], rgb.shape[1], sizes.native, sizes)
    return resize_to(rgb, h, w, prep)[None]
