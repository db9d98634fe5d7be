"""Is an artifact faithful to its PyTorch model? ``metrics`` compares logits and judges them against a
tolerance (numpy only); ``reference`` rebuilds the PyTorch FP32 reference from a manifest."""
