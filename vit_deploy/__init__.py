"""vit-deploy: take a Vision Transformer from PyTorch to ONNX, precision graphs and TensorRT engines.

Importing the package is cheap: heavy or optional dependencies (torch, onnx, tensorrt, modelopt,
tritonclient) are imported by the modules that need them, never here.
"""

__version__ = "0.1.0"
