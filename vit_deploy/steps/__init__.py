"""The pipeline's steps, one library call each: ``export`` (checkpoint -> FP32 ONNX), ``precision``
(FP32 -> FP16/INT8 graph), ``engine`` (graph -> TensorRT plan)."""
