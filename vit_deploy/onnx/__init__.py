"""ONNX graph steps: export from PyTorch, simplification, and ONNX Runtime validation."""
