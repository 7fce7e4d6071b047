"""Sub-batches of similar length (attribution/unlearning/lm.py length_buckets): a bucketed pass gives the
same per-example losses, log-probabilities, batch loss and gradient as one padded batch, on
chat-formatted records of very different lengths, and pads far less."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_lm import make_model, make_records

from attribution.lm_data import collate
from attribution.lm_loss import example_loss, forward_logits
from attribution.training import encode_records, finetune_causal_lm, train_module
from attribution.unlearning.lm import (
    EncodedSet,
    bucketed_collate,
    bucketed_example_loss,
    length_buckets,
    matching_loss,
    mean_losses,
    padded_tokens,
    per_token_logprobs,
    sft_batch_loss,
    token_logprobs,
)


@pytest.fixture(scope="module")
def chat_data(chat_lm):
    """Chat-formatted records of one to eight response copies (about 60 to 250 tokens), in mixed order."""
    model, tokenizer = chat_lm
    base = make_records(24, seed=7)
    records = []
    for i, record in enumerate(base):
        lines = [record["response"]] * (1 + (i * 5) % 8)
        records.append({**record, "response": "\n".join(lines)})
    data = EncodedSet(tokenizer, records, max_length=256)
    assert data.lengths.max() > 3 * data.lengths.min()
    return model, data


def _one_padded_batch(model, data, rows):
    batch = collate([data.items[int(i)] for i in rows], data.pad)
    return batch, forward_logits(model, batch)


def test_buckets_partition_by_length():
    lengths = np.array([100, 12, 95, 14, 50, 81, 13])
    buckets = length_buckets(lengths, 1.25)
    assert sorted(np.concatenate(buckets)) == list(range(7))
    assert [sorted(lengths[b].tolist()) for b in buckets] == [[81, 95, 100], [50], [12, 13, 14]]
    assert [list(b) for b in length_buckets(lengths, None)] == [list(range(7))]
    assert length_buckets([], 1.25) == []


def test_eval_passes_match_one_padded_batch(chat_data):
    model, data = chat_data
    rows = np.arange(len(data))
    with torch.no_grad():
        batch, logits = _one_padded_batch(model, data, rows)
        want_loss = example_loss(logits, batch["labels"]).double().numpy()
        logp, mask = token_logprobs(model, batch)
    np.testing.assert_allclose(mean_losses(model, data), want_loss, rtol=1e-5, atol=1e-6)
    got = per_token_logprobs(model, data)
    for k in rows:
        np.testing.assert_allclose(got[k], logp[k][mask[k]].double().numpy(), rtol=1e-5, atol=1e-5)
    # the unbucketed pass (consecutive batches of 16) agrees too
    np.testing.assert_allclose(mean_losses(model, data, ratio=None), want_loss, rtol=1e-5, atol=1e-6)


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["sft", "dmm"])
def test_training_loss_and_gradient_match_unbucketed(chat_data, kind):
    model, data = chat_data
    rows = np.array([0, 5, 11, 3, 5, 17, 8, 22, 1, 14])  # a batch with a repeat, as DMM's sequence has
    rng = np.random.default_rng(0)
    with torch.no_grad():
        logp = per_token_logprobs(model, data)
    targets = [np.minimum(lp - rng.uniform(0, 0.5), 0.0) for lp in logp]

    def loss(ratio):
        if kind == "sft":
            return sft_batch_loss(model, data, rows, ratio)
        return matching_loss(model, data, targets, rows, ratio)

    model.train()
    bucketed, plain = loss(1.25), loss(None)
    assert len(length_buckets(data.lengths[rows], 1.25)) > 2  # the batch really is split
    torch.testing.assert_close(bucketed, plain, rtol=1e-5, atol=1e-7)
    g_bucketed, g_plain = _grads(model, loss(1.25)), _grads(model, loss(None))
    assert g_bucketed.keys() == g_plain.keys() and g_plain
    for name in g_plain:
        torch.testing.assert_close(g_bucketed[name], g_plain[name], rtol=1e-4, atol=1e-7)
    model.eval()
    if kind == "sft":  # and the unbucketed value is the plain SFT batch loss
        with torch.no_grad():
            batch, logits = _one_padded_batch(model, data, rows)
            torch.testing.assert_close(plain, example_loss(logits, batch["labels"]).mean())


def test_buckets_pad_less(chat_data):
    _, data = chat_data
    rows = np.arange(len(data))
    lengths = data.lengths[rows]
    one_batch = padded_tokens(lengths, rows, len(rows))
    bucketed = sum(len(b) * lengths[b].max() for b in length_buckets(lengths))
    assert bucketed <= 1.25 * lengths.sum()  # each sub-batch within 25% of its longest
    assert one_batch > 1.5 * bucketed  # measured 1.85: 24 x 256 tokens against 3,316


def test_bucketed_training_is_the_reference_recipe(chat_lm, chat_data):
    """The retrains' loop (train_module with bucketed_collate / bucketed_example_loss) takes the steps
    finetune_causal_lm takes on the same records: the same model up to rounding."""
    _, tokenizer = chat_lm
    _, data = chat_data
    records = [dict(r) for r in make_records(24, seed=7)]
    for i, record in enumerate(records):
        record["response"] = "\n".join([record["response"]] * (1 + (i * 5) % 8))
    recipe = {"epochs": 2, "lr": 3e-3, "batch_size": 8, "seed": 3}
    plain = finetune_causal_lm(make_model(tokenizer, seed=2), tokenizer, records, max_length=256, **recipe)
    bucketed = train_module(
        make_model(tokenizer, seed=2),
        bucketed_example_loss,
        encode_records(tokenizer, records, 256),
        collate_fn=bucketed_collate(tokenizer.pad_token_id),
        **recipe,
    )
    untrained = mean_losses(make_model(tokenizer, seed=2), data)
    want, got = mean_losses(plain, data), mean_losses(bucketed, data)
    assert np.abs(want - untrained).min() > 0.05  # training moved every loss
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
