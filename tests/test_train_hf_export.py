"""The Hugging Face Llama layout of the reference model: transformers' LlamaForCausalLM, built
from the written config.json and model.safetensors alone, gives Stoker's logits. (A trained
checkpoint through `stoker export --format hf`: tests/test_train_recovery.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from stoker.spec.errors import StokerError
from stoker.spec.train import ModelShape
from stoker.train.hf_llama import CONFIG_FILE, WEIGHTS_FILE, hf_config, hf_state_dict
from stoker.train.model import Transformer

SHAPES = {
    "mha-untied": ModelShape(dim=64, n_layers=2, n_heads=2, n_kv_heads=2, ffn_hidden=128,
                             vocab_size=256),
    "gqa-tied": ModelShape(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96,
                           vocab_size=300, norm_eps=1e-6, rope_theta=500000.0,
                           tie_embeddings=True),
}


def random_model(shape: ModelShape) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(shape)
    model.init_weights()
    with torch.no_grad():  # norms away from 1, so a swapped norm shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def load_hf(path: Path, monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # local files only
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def max_logit_diff(model: Transformer, hf: torch.nn.Module, vocab_size: int) -> float:
    tokens = torch.randint(0, vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return float((model(tokens) - hf(tokens).logits).abs().max())


@pytest.mark.parametrize("name", SHAPES)
def test_transformers_gives_the_same_logits(name: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    shape = SHAPES[name]
    model = random_model(shape)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors = hf_state_dict(shape, state)
    assert ("lm_head.weight" in tensors) is not shape.tie_embeddings
    save_file(tensors, str(tmp_path / WEIGHTS_FILE), metadata={"format": "pt"})
    config = hf_config(shape, max_positions=64, dtype=torch.float32, eos_id=0)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    hf = load_hf(tmp_path, monkeypatch)
    assert hf.config.num_key_value_heads == shape.n_kv_heads
    assert max_logit_diff(model, hf, shape.vocab_size) < 1e-4


def test_a_tensor_llama_has_no_place_for_is_refused() -> None:
    shape = SHAPES["mha-untied"]
    state = dict(random_model(shape).state_dict())
    with pytest.raises(StokerError, match=r"^layers\.0\.attention\.wq\.bias: the Llama layout"):
        hf_state_dict(shape, {**state, "layers.0.attention.wq.bias": torch.zeros(64)})
    del state["norm.weight"]
    with pytest.raises(StokerError, match=r"lacks model\.norm\.weight"):
        hf_state_dict(shape, state)
