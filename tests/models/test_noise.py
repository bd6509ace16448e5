"""Per-shower noise streams: a model's notice of what it needs (``reserve``) changes how
much is drawn, never which numbers a shower gets."""

from __future__ import annotations

import pytest
import torch

from caloforge.models.noise import NORMAL_BLOCK, ShowerNoise, randn, reserve, shower_seed


def _stream(seed: int, index: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(shower_seed(seed, index))
    return torch.randn(n, generator=g)


@pytest.mark.parametrize("first", [5, 16, 64, 373, NORMAL_BLOCK + 3])
def test_reserve_hands_out_the_same_numbers_as_the_block(first):
    """With or without the notice, shower i's draws are its stream's values in order,
    also past what was reserved."""
    then = 700
    noticed, plain = ShowerNoise.for_showers(3, [0, 9]), ShowerNoise.for_showers(3, [0, 9])
    noticed.reserve(first)
    drawn_noticed = torch.cat([noticed.randn(first), noticed.randn(then)], 1)
    drawn_plain = torch.cat([plain.randn(first), plain.randn(then)], 1)
    torch.testing.assert_close(drawn_noticed, drawn_plain, rtol=0, atol=0)
    if first < NORMAL_BLOCK:  # one long draw of the stream, as documented for exports
        expected = torch.stack([_stream(3, i, NORMAL_BLOCK)[:first + then] for i in (0, 9)])
        torch.testing.assert_close(drawn_noticed, expected, rtol=0, atol=0)


def test_reserve_draws_only_what_is_missing():
    noise = ShowerNoise.for_showers(1, range(4))
    noise.reserve(64)
    assert noise._normals.shape == (4, 64)  # not a block of NORMAL_BLOCK
    noise.randn(60)
    noise.reserve(10)  # 4 left, 6 missing: one group of 16 more
    assert noise._normals.shape == (4, 4 + 16)


def test_reserve_on_a_plain_generator_changes_nothing():
    a, b = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    reserve(a, 100)
    torch.testing.assert_close(randn(a, 3, 5), randn(b, 3, 5), rtol=0, atol=0)
