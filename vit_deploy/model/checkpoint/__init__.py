"""Reading pretrained ViT checkpoints and loading them into the reference model.

This package owns everything between "the user named some weights" and "the reference model
holds them": resolving the spec (a file, a Hugging Face directory, or an ``hf:`` / ``timm:``
hub id), reading the file *safely* (``torch.load(weights_only=True)``, safetensors, or
``np.load`` without pickles), recognising the layout (timm, Hugging Face transformers 4.x or
5.x names, Google's JAX ``.npz``), checking the config files beside it field by field
(``configs``) and every tensor for NaN and infinity, mapping it onto the reference (timm)
parameter names, and the strict fit check against the model (missing/unexpected keys, shapes,
class count), with position embeddings resampled when only the resolution differs.

Two steps, because the checkpoint decides part of the model config (``layer_norm_eps``, the
preprocessing) before the model can be built::

    ckpt = read_checkpoint(spec)
    cfg = model_config(variant, img_size, num_classes, **ckpt.config_overrides)
    model = create_model(cfg)
    facts = load_into(model, ckpt)  # provenance for the manifest, e.g. {"pos_embed_resampled_from": 14}

Every failure is a ``CheckpointError`` whose one-line message says what is wrong and what to do.
"""

from .fit import load_into, preprocessing_overrides
from .sources import Checkpoint, read_checkpoint

__all__ = ["Checkpoint", "load_into", "preprocessing_overrides", "read_checkpoint"]
