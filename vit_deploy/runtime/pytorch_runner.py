"""The PyTorch reference model behind the runner interface.

The model is rebuilt from the artifact's manifest (variant, resolution, classes, checkpoint
with its sha256), so any artifact can be run as PyTorch FP32: the reference every other
backend is compared with. ``autocast="bfloat16"`` runs it under CPU/GPU autocast (a peer the
benchmarks compare against; the reference itself is always FP32). Forward passes in
``torch.inference_mode`` share no mutable state, so concurrent calls need no lock. The embedding
is the model's own ``features`` (what ``forward`` hands to the head), from the same pass.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..artifact import Artifact
from ..errors import UsageError
from ..parity.reference import reference_model
from . import embedding
from .base import Runner, _is_torch

AUTOCAST_DTYPES = ("bfloat16", "float16")


class PyTorchRunner(Runner):
    backend = "pytorch"

    def __init__(
        self, artifact: Artifact, *, device: str = "cpu", autocast: str | None = None,
        threads: int | None = None, max_batch: int | None = None, model: Any = None,
    ) -> None:
        super().__init__(artifact, max_batch)
        import torch

        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise UsageError(f"autocast {autocast!r} is unknown; choose one of {', '.join(AUTOCAST_DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"device {device!r} asked for, but this torch {torch.__version__} sees no CUDA GPU")
        try:
            self.device = torch.device(device)
            torch.empty(0, device=self.device)  # a GPU index that does not exist fails here, not mid-call
        except (RuntimeError, AssertionError) as e:
            raise UsageError(f"torch cannot use device {device!r}: {str(e).splitlines()[0]}") from None
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
        self.autocast = autocast
        # the export step passes the model it just traced; everyone else rebuilds it from the manifest
        self.model = (model if model is not None else reference_model(artifact)).to(self.device).eval()
        self.precision = f"fp32+autocast-{autocast}" if autocast else "fp32"

    def _run(self, batch: Any) -> Any:
        return self._run_outputs(batch, (embedding.LOGITS,))[embedding.LOGITS]

    def _prepare_embedding(self) -> None:
        if not callable(getattr(self.model, "features", None)):  # a model handed in by a caller, not vit-deploy's
            raise UsageError(f"the PyTorch model of {self.directory} has no features() giving its pre-head embedding")

    def _run_outputs(self, batch: Any, names: tuple[str, ...]) -> dict[str, Any]:
        import torch

        x = batch if _is_torch(batch) else torch.from_numpy(batch)
        autocast = (
            torch.autocast(self.device.type, dtype=getattr(torch, self.autocast)) if self.autocast
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            x = x.to(self.device)
            if embedding.EMBEDDING in names:
                features = self.model.features(x)
                found = {embedding.EMBEDDING: features, embedding.LOGITS: self.model.head(features)}
            else:
                found = {embedding.LOGITS: self.model(x)}
        found = {n: found[n].float() for n in names}
        if _is_torch(batch):
            return {n: v.to(batch.device) for n, v in found.items()}
        return {n: v.cpu().numpy() for n, v in found.items()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": str(self.device)}

    @property
    def label(self) -> str:
        import torch

        return f"pytorch {torch.__version__} {self.precision} on {self.device}"

    def _release(self) -> None:
        del self.model
