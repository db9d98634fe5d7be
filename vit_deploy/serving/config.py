"""Triton's ModelConfig: its protobuf schema (from tritonclient) and the parser that every
``config.pbtxt`` we write or serve goes through, so a field Triton would reject is caught here."""

from __future__ import annotations

from ..errors import ArtifactError, UsageError


def model_config_pb2():
    """Triton's ModelConfig protobuf module, or a one-line error saying what to install."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise UsageError(f"Triton serving needs tritonclient ({e}); pip install 'vit-deploy[serve]'") from e
    return model_config_pb2


def parse_config(text: str):
    """Parse ``config.pbtxt`` text with Triton's real ModelConfig schema; UsageError says what is wrong."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ArtifactError(f"config.pbtxt does not parse against Triton's ModelConfig schema: {e}") from e
