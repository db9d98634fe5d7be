"""The reference PyTorch ViT, its checkpoint loaders and position-embedding resampling."""
