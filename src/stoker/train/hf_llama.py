"""The reference model in Hugging Face's Llama layout: ``config.json`` and ``model.safetensors``
that ``transformers.LlamaForCausalLM.from_pretrained(dir)`` loads and runs to the same logits.

Two things differ besides the names. Rotary embeddings: Stoker rotates consecutive pairs of a
head's dimensions, (x0, x1), (x2, x3), ...; Hugging Face's Llama rotates the first half against
the second, (x0, x_{d/2}), (x1, x_{d/2+1}), ... with the same frequency per pair. Reordering the
output rows of wq and wk within each head (pair i's two rows to positions i and i + d/2) makes
HF's rotation of the reordered q and k equal Stoker's, and attention scores only see q·k, where
the order of the dimensions cancels. Tied embeddings: HF keeps one tensor, no ``lm_head``.
Everything else (RMSNorm with the same eps, SwiGLU, no biases, 1/sqrt(head_dim) attention
scaling, grouped-query heads, rotary frequencies theta^(-2i/d)) is Llama's as it is.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from stoker.spec.errors import StokerError
from stoker.spec.train import ModelShape

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

LAYER_NAMES = {  # Stoker's name within a block -> HF's within model.layers.N
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def pairs_to_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder a q or k projection's rows [heads * head_dim, dim] from rotating consecutive
    pairs to rotating halves: row 2i + c of a head moves to row c * head_dim / 2 + i."""
    dim_in = weight.shape[1]
    return weight.reshape(heads, -1, 2, dim_in).transpose(1, 2).reshape(-1, dim_in)


def hf_state_dict(shape: ModelShape, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain model's state dict under HF Llama's names, q and k reordered for its rotary
    convention; a tensor Llama has no place for is refused, naming it."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name == "tok_embeddings.weight":
            out["model.embed_tokens.weight"] = tensor
        elif name == "norm.weight":
            out["model.norm.weight"] = tensor
        elif name == "output.weight":
            if not shape.tie_embeddings:
                out["lm_head.weight"] = tensor
        elif (m := LAYER.fullmatch(name)) and m[2] in LAYER_NAMES:
            if m[2] == "attention.wq.weight":
                tensor = pairs_to_halves(tensor, shape.n_heads)
            elif m[2] == "attention.wk.weight":
                tensor = pairs_to_halves(tensor, shape.n_kv_heads)
            out[f"model.layers.{m[1]}.{LAYER_NAMES[m[2]]}"] = tensor
        else:
            raise StokerError(f"{name}: the Llama layout has no place for this tensor")
    missing = expected_names(shape) - out.keys()
    if missing:
        raise StokerError(f"the checkpoint lacks {min(missing)} of the Llama layout "
                          f"({len(missing)} tensors missing)")
    return out


def expected_names(shape: ModelShape) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    names |= {f"model.layers.{i}.{n}" for i in range(shape.n_layers) for n in LAYER_NAMES.values()}
    return names if shape.tie_embeddings else names | {"lm_head.weight"}


def hf_config(shape: ModelShape, *, max_positions: int, dtype: torch.dtype,
              eos_id: int | None) -> dict[str, Any]:
    """``config.json`` of a ``LlamaForCausalLM`` of this shape. ``rope_theta`` is written both
    where transformers 4 reads it and inside ``rope_parameters``, where 5 does."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.dim,
        "intermediate_size": shape.ffn_hidden,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": shape.norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": shape.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": None,  # documents are separated by eos only
        "eos_token_id": eos_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
