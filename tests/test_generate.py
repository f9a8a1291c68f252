"""Sampling with a KV cache (`stoker.train.generate`) against the training forward recomputed
over the whole sequence at every step."""

from __future__ import annotations

import pytest
import torch

from stoker.spec.train import ModelShape
from stoker.train.generate import KVCache, Sampling, forward_cached, generate
from stoker.train.model import Transformer

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9], [4, 4, 4]]


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    shape = ModelShape(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128,
                       vocab_size=50)
    m = Transformer(shape)
    m.init_weights()
    return m.eval()


def recomputed(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by the training forward over the whole sequence, one prompt alone."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def test_a_padded_batch_with_the_cache_decodes_as_each_prompt_alone(model: Transformer) -> None:
    got = generate(model, PROMPTS, Sampling(max_new_tokens=12, temperature=0))
    assert got == [recomputed(model, p, 12) for p in PROMPTS]


def test_cached_logits_equal_the_training_forwards(model: Transformer) -> None:
    seq = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    cache = KVCache(model, 1, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        prefill = forward_cached(model, seq[:, :5], torch.arange(5)[None], cache, causal)
        steps = [forward_cached(model, seq[:, t:t + 1], torch.tensor([[t]]), cache,
                                torch.ones(1, 1, 1, t + 1, dtype=torch.bool))[:, 0]
                 for t in range(5, 8)]
        full = model(seq)
    torch.testing.assert_close(prefill, full[:, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:], atol=1e-5, rtol=1e-5)


def test_sampling_follows_its_settings(model: Transformer) -> None:
    greedy = generate(model, PROMPTS, Sampling(max_new_tokens=8, temperature=0))
    narrow = generate(model, PROMPTS, Sampling(max_new_tokens=8, temperature=1, top_p=1e-6))
    assert narrow == greedy  # a nucleus of one token is the argmax
    hot = Sampling(max_new_tokens=8, temperature=2.0, seed=1)
    assert generate(model, PROMPTS, hot) == generate(model, PROMPTS, hot)  # seeded
    other = Sampling(max_new_tokens=8, temperature=2.0, seed=2)
    assert generate(model, PROMPTS, other) != generate(model, PROMPTS, hot)
    stop = greedy[0][2]
    stopped = generate(model, PROMPTS, Sampling(max_new_tokens=8, temperature=0,
                                                stop_tokens=(stop,)))
    assert stopped[0] == greedy[0][:3]  # up to and including the stop token
    for row, full in zip(stopped, greedy, strict=True):
        assert row == full[:full.index(stop) + 1] if stop in full else row == full


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0},
                                 {"top_p": 1.5}])
def test_impossible_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Sampling(**bad)  # type: ignore[arg-type]


def test_an_empty_prompt_is_refused(model: Transformer) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], Sampling())
