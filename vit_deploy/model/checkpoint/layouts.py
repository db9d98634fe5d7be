"""Checkpoint layouts (Hugging Face transformers 4.x/5.x, Google JAX) mapped onto the reference (timm)
names."""


from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CheckpointError

# JAX layouts -> torch: conv HWIO -> OIHW, attention out [heads, hd, dim] -> [dim, heads, hd],
# Dense [in, out] -> [out, in] (timm's _n2p).
_JAX_TO_TORCH_AXES = {4: (3, 2, 0, 1), 3: (2, 0, 1), 2: (1, 0)}


def _map_tensors(
    raw: dict[str, torch.Tensor], path: Path, config: dict[str, Any] | None
) -> tuple[dict[str, torch.Tensor], str, int | None]:
    if not raw:
        raise CheckpointError(
            f"{path}: the checkpoint holds no tensors; pass the file with the model weights"
        )
    if any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for k in raw):
        return _hf_to_reference(raw, path, config if _is_vit_config(config) else None)
    if any(k.endswith("embedding/kernel") for k in raw):  # a JAX layout re-saved as torch/safetensors
        return _jax_to_reference({k: v.numpy() for k, v in raw.items()}, path)
    return raw, "timm", None


def _is_vit_config(config: dict[str, Any] | None) -> bool:
    # A config.json that happens to sit beside the file but describes something else is ignored.
    return bool(config) and config.get("model_type", "vit") == "vit"


# transformers 4.x (and save_pretrained's on-disk names) | 5.x in-memory names -> reference names.
_HF_LAYER_MODULES = {
    "attention.attention.query": "q",
    "attention.q_proj": "q",
    "attention.attention.key": "k",
    "attention.k_proj": "k",
    "attention.attention.value": "v",
    "attention.v_proj": "v",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)")


def _hf_to_reference(
    raw: dict[str, torch.Tensor], path: Path, config: dict[str, Any] | None
) -> tuple[dict[str, torch.Tensor], str, int | None]:
    config = config or {}
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(
            f"{path}: the Hugging Face config uses hidden_act={act!r}; the reference model "
            "implements the exact (erf) GELU only, as all ViT checkpoints do"
        )
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[int, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in raw.items():
        # ViTForImageClassification nests the encoder under "vit."; a bare ViTModel does not.
        name = key.removeprefix("vit.")
        if name == "embeddings.mask_token":
            continue  # only used for masked-image pre-training; never part of the classifier
        if name in _HF_TOP:
            out[_HF_TOP[name]] = tensor
        elif key in ("classifier.weight", "classifier.bias"):
            out["head." + key.rsplit(".", 1)[1]] = tensor
        elif (m := _HF_LAYER.fullmatch(name)) and m.group(2) in _HF_LAYER_MODULES:
            layer, target, param = int(m.group(1)), _HF_LAYER_MODULES[m.group(2)], m.group(3)
            if target in ("q", "k", "v"):
                qkv_parts.setdefault((layer, param), {})[target] = (key, tensor)
            else:
                out[f"blocks.{layer}.{target}.{param}"] = tensor
        else:
            out[key] = tensor  # kept under its own name, so the fit check lists it as unexpected
    for (layer, param), parts in qkv_parts.items():
        if set(parts) == {"q", "k", "v"} and len({t.shape for _, t in parts.values()}) == 1:
            # The reference's fused projection is [q; k; v] along the output dim, like timm's.
            out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts[n][1] for n in ("q", "k", "v")], dim=0)
        else:  # incomplete or inconsistent: report the pieces (unexpected) and the fused key (missing)
            out.update(dict(parts.values()))
    if config.get("qkv_bias") is False:
        # HF can drop the q/k/v biases; the reference always has one, and zero is the same function.
        for layer in {layer for layer, _ in qkv_parts}:
            weight = out.get(f"blocks.{layer}.attn.qkv.weight")
            if weight is not None:
                out.setdefault(f"blocks.{layer}.attn.qkv.bias", weight.new_zeros(weight.shape[0]))
    heads = config.get("num_attention_heads")
    return out, "hf", int(heads) if isinstance(heads, int) else None


def _jax_to_reference(
    arrays: dict[str, np.ndarray], path: Path
) -> tuple[dict[str, torch.Tensor], str, int | None]:
    """Google's JAX ViT (.npz) -> reference names. Follows timm's ``_load_weights``.

    JAX stores Dense kernels as [in, out] and attention kernels per head: query/key/value
    [dim, heads, head_dim] with bias [heads, head_dim], out [heads, head_dim, dim]; the patch
    embedding conv is HWIO [ph, pw, C, dim]. big_vision checkpoints nest everything under
    "params/" with other module indices, and may stack ("scan") the blocks along a leading axis.
    """
    prefix = next(
        (p for p in ("opt/target/", "params/img/", "params/") if f"{p}embedding/kernel" in arrays), ""
    )
    if f"{prefix}embedding/kernel" not in arrays:
        raise CheckpointError(
            f"{path}: not a Google ViT JAX checkpoint (no 'embedding/kernel' array); "
            "pass a timm/Hugging Face state dict or an official ViT .npz"
        )
    big_vision = prefix.startswith("params/")
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    def take(key: str, transpose: bool = True, idx: int | None = None) -> torch.Tensor | None:
        full = prefix + key
        if full not in arrays:
            return None
        used.add(full)
        w = arrays[full] if idx is None else arrays[full][idx]
        if w.ndim == 4 and w.shape[0] == w.shape[1] == w.shape[2] == 1:
            w = w.reshape(-1)  # a [1, 1, 1, D] scale/bias saved with its broadcast dims
        if transpose and w.ndim in _JAX_TO_TORCH_AXES:
            w = np.transpose(w, _JAX_TO_TORCH_AXES[w.ndim])
        try:
            return torch.from_numpy(np.ascontiguousarray(w))
        except TypeError:
            raise CheckpointError(
                f"{path}: array {full!r} has dtype {w.dtype}, which torch cannot read "
                "(bfloat16 saved without ml_dtypes?); re-save it as float32"
            ) from None

    def put(name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            out[name] = tensor

    put("patch_embed.proj.weight", take("embedding/kernel"))
    put("patch_embed.proj.bias", take("embedding/bias"))
    put("cls_token", take("cls", transpose=False))
    put(
        "pos_embed",
        take("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding", transpose=False),
    )
    put("norm.weight", take("Transformer/encoder_norm/scale"))
    put("norm.bias", take("Transformer/encoder_norm/bias"))
    put("head.weight", take("head/kernel"))
    put("head.bias", take("head/bias"))

    mha, mlp, ln2 = (
        ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
        if big_vision
        else ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    )
    scanned = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in arrays
    if scanned:
        depth = arrays[f"{prefix}Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
    else:
        block_re = re.compile(re.escape(prefix) + r"Transformer/encoderblock_(\d+)/")
        depth = 1 + max((int(m.group(1)) for k in arrays if (m := block_re.match(k))), default=-1)
    heads: int | None = None
    for i in range(depth):
        bp, idx = ("Transformer/encoderblock/", i) if scanned else (f"Transformer/encoderblock_{i}/", None)
        b = f"blocks.{i}."
        put(b + "norm1.weight", take(bp + "LayerNorm_0/scale", idx=idx))
        put(b + "norm1.bias", take(bp + "LayerNorm_0/bias", idx=idx))
        kernels = [take(f"{bp}{mha}/{n}/kernel", transpose=False, idx=idx) for n in ("query", "key", "value")]
        if all(k is not None and k.ndim == 3 for k in kernels):
            heads = heads or int(kernels[0].shape[1])
            # [dim, heads, head_dim] -> [dim, dim] (in, out) -> [out, in], stacked q, k, v.
            out[b + "attn.qkv.weight"] = torch.cat([k.flatten(1).T for k in kernels])
        biases = [take(f"{bp}{mha}/{n}/bias", transpose=False, idx=idx) for n in ("query", "key", "value")]
        if all(x is not None for x in biases):
            out[b + "attn.qkv.bias"] = torch.cat([x.reshape(-1) for x in biases])
        proj = take(f"{bp}{mha}/out/kernel", idx=idx)  # -> [dim, heads, head_dim]
        put(b + "attn.proj.weight", proj.flatten(1) if proj is not None else None)
        put(b + "attn.proj.bias", take(f"{bp}{mha}/out/bias", idx=idx))
        put(b + "norm2.weight", take(f"{bp}{ln2}/scale", idx=idx))
        put(b + "norm2.bias", take(f"{bp}{ln2}/bias", idx=idx))
        for r in range(2):
            put(f"{b}mlp.fc{r + 1}.weight", take(f"{bp}{mlp}/Dense_{r}/kernel", idx=idx))
            put(f"{b}mlp.fc{r + 1}.bias", take(f"{bp}{mlp}/Dense_{r}/bias", idx=idx))
    # Arrays nothing above consumed (pre_logits, a MAP head, ...) stay under their own names, so
    # the fit check reports them as unexpected instead of silently dropping them.
    for key in arrays.keys() - used:
        try:
            out[key] = torch.from_numpy(np.ascontiguousarray(arrays[key]))
        except TypeError:
            out[key] = torch.empty(0)
    return out, "jax", heads
