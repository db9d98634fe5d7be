"""User-facing exception types.

Library code raises these; only the CLI turns them into an exit code and one line of text.
Every message says what went wrong *and* what to do about it.
"""

from __future__ import annotations


class VitDeployError(Exception):
    """An error the user can fix. The CLI prints the message and exits with ``exit_code``."""

    exit_code = 1


class UsageError(VitDeployError):
    """Bad option values: unknown model, resolution not divisible by the patch size, ..."""


class CheckpointError(VitDeployError):
    """A weights file that is missing, unreadable, unsafe, or does not fit the model."""


class ArtifactError(VitDeployError):
    """An artifact directory that is missing, incomplete, altered, or would be overwritten."""


class ValidationFailed(VitDeployError):
    """The artifact was written but does not match the reference within tolerance.

    Exit code 2 (not 1) so scripts can tell "you asked for something impossible" apart from
    "the result is numerically wrong"; the artifact stays on disk for inspection.
    """

    exit_code = 2


class EngineUnavailable(VitDeployError):
    """The (validated) precision graph is ready but no TensorRT engine can be built on this machine.

    Exit code 3, distinct from failure (1, 2): the CPU half of ``build-engine`` succeeded and the
    message says where to finish (a GPU host with TensorRT).
    """

    exit_code = 3


class EngineBuildError(VitDeployError):
    """TensorRT could not parse the graph or build the engine; the message lists every error it reported.

    Exit code 1: the graph (or an option) has to change before a rebuild can succeed.
    """
