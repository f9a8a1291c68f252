"""Context parallelism's cut of the sequence (the trajectories under cp are in
test_train_layouts.py, resumes across layouts in test_train_layout_resume.py, compiled blocks
under cp in test_train_compiled_layouts.py)."""

from __future__ import annotations

import pytest
import torch

from stoker.train.context_parallel import GatheredAttention, positions_of
from stoker.train.model import causal_attention


@pytest.mark.parametrize(("seq_len", "cp"), [(32, 2), (64, 4), (24, 3), (8, 1)])
def test_the_ranks_hold_every_position_once_with_equal_causal_work(seq_len: int, cp: int) -> None:
    held = [positions_of(seq_len, cp, r) for r in range(cp)]
    assert sorted(p for mine in held for p in mine) == list(range(seq_len))
    assert all(len(mine) == seq_len // cp for mine in held)
    # Under the causal mask a query at position p attends to p + 1 keys.
    work = {sum(p + 1 for p in mine) for mine in held}
    assert len(work) == 1


def test_rank_r_holds_chunks_r_and_its_mirror() -> None:
    assert positions_of(16, 2, 0) == [0, 1, 2, 3, 12, 13, 14, 15]
    assert positions_of(16, 2, 1) == [4, 5, 6, 7, 8, 9, 10, 11]


@pytest.mark.parametrize("end", [16, 48, 64])
def test_a_chunk_attends_as_its_rows_of_full_causal_attention(end: int) -> None:
    """Queries at positions [end - n, end) over the keys of [0, end) under the chunk's mask:
    the same rows as causal attention over the whole prefix (grouped-query heads too)."""
    n = 16
    attend = GatheredAttention(None, (0, 3), n, torch.arange(4 * n),  # type: ignore[arg-type]
                               torch.float32)
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 4, end, 32, generator=gen)
    k, v = (torch.randn(2, 2, end, 32, generator=gen) for _ in range(2))
    q = queries[:, :, end - n:]
    full = causal_attention(queries, k, v)[:, :, end - n:]
    torch.testing.assert_close(causal_attention(q, k, v, attend.mask(end, q)), full)
    assert attend.mask(end, q) is attend.mask(end, q)  # made once, shared by every call

