"""Length-grouped batches in the unlearning loops: every item once per epoch, reproducible, and far
less padding than random batches on the demo corpus' real lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution.reference_model import build_tokenizer
from attribution.unlearning.lm import EncodedSet, length_grouped_order, padded_tokens
from attribution.unlearning.loop import OptimConfig, optimise
from curation.corpus import demo_corpus


@pytest.fixture(scope="module")
def demo_lengths() -> np.ndarray:
    """Token counts of the demo training set (math and HumanEval, prompt + response) as SFT encodes them."""
    records = demo_corpus()["train"]
    tokenizer = build_tokenizer([r["prompt"] + r["response"] for r in records])
    return EncodedSet(tokenizer, records, max_length=512).lengths


def test_padded_tokens_by_hand():
    lengths = [3, 10, 4, 9]
    assert padded_tokens(lengths, np.array([0, 1, 2, 3]), 2) == 2 * 10 + 2 * 9
    assert padded_tokens(lengths, np.array([0, 2, 1, 3]), 2) == 2 * 4 + 2 * 10
    assert padded_tokens(lengths, np.array([0, 2, 1]), 2) == 2 * 4 + 1 * 10  # a short last batch


def test_grouped_order_is_a_reproducible_permutation(demo_lengths):
    order = length_grouped_order(demo_lengths, 32)
    first = order(np.random.default_rng(5))
    assert sorted(first) == list(range(len(demo_lengths)))
    np.testing.assert_array_equal(order(np.random.default_rng(5)), first)
    assert not np.array_equal(order(np.random.default_rng(6)), first)  # epochs differ
    assert length_grouped_order(demo_lengths, 32, group_by_length=False) is None
    # an epoch of fewer than 8 batches keeps random batches
    assert length_grouped_order(demo_lengths[:255], 32) is None
    assert length_grouped_order(demo_lengths[:256], 32) is not None


def test_grouped_batches_pad_far_less_than_random_ones(demo_lengths):
    real = int(demo_lengths.sum())
    rng = np.random.default_rng(0)
    grouped = np.mean(
        [padded_tokens(demo_lengths, length_grouped_order(demo_lengths, 32)(rng), 32) for _ in range(5)]
    )
    random = np.mean([padded_tokens(demo_lengths, rng.permutation(len(demo_lengths)), 32) for _ in range(5)])
    assert random / real > 2.0  # the waste issue 23 measured (2.18x on the demo's unlearning run)
    assert grouped / real < 1.5  # measured 1.35: the long HumanEval tail still pads the longest batch
    assert random / grouped > 1.8  # measured 2.2
    # the DMM fine-tuning sequence repeats F five times: repeats group together as well
    sequence = np.concatenate([np.tile(np.arange(10), 5), np.arange(10, 210)])
    lengths = demo_lengths[sequence]
    grouped = padded_tokens(lengths, length_grouped_order(lengths, 16)(rng), 16)
    assert grouped < 0.75 * padded_tokens(lengths, rng.permutation(len(lengths)), 16)  # measured 0.59


def test_optimise_takes_its_batches_from_the_epoch_order():
    lengths = np.array([5, 50, 6, 51, 7, 52, 8, 53])
    seen: list[np.ndarray] = []
    weight = torch.nn.Parameter(torch.zeros(1))

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        seen.append(np.array(idx))
        return (weight - 1.0).pow(2).sum()

    model = torch.nn.Module()
    model.weight = weight
    config = OptimConfig(lr=0.1, epochs=3, batch_size=4)
    optimise(
        model, len(lengths), batch_loss, config, epoch_order=length_grouped_order(lengths, 4, min_batches=2)
    )
    assert len(seen) == 6
    for epoch in range(3):
        batches = seen[2 * epoch : 2 * epoch + 2]
        assert sorted(np.concatenate(batches)) == list(range(8))  # every item once per epoch
        assert sorted(set(lengths[batches[0]] > 20) | set(lengths[batches[1]] > 20)) == [False, True]
        assert all(len(set(lengths[b] > 20)) == 1 for b in batches)  # short with short, long with long
