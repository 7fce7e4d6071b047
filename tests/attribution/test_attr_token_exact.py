"""Token rows are exact: row t is -grad f^T H^-1 grad l_t with l_t the loss of *predicting* token t, on a
causal LM with a prompt and a chat template, and the rows of an example sum to its example score."""

import copy

import numpy as np
import pytest
import torch

from attribution.api import attribute
from attribution.correctness import generate
from attribution.lm_data import IGNORE_INDEX, encode_sft
from attribution.lm_loss import example_loss
from attribution.tasks import select_modules

MAX_LENGTH = 56  # cuts the three-line (hard math) responses: truncation is part of every test here


@pytest.fixture(scope="module")
def setup(chat_lm, records, targets):
    model, tok = chat_lm
    torch.set_num_threads(1)
    train = records[:8]
    cut = [
        (encode_sft(tok, r, MAX_LENGTH)["labels"] != IGNORE_INDEX).sum()
        < (encode_sft(tok, r, 512)["labels"] != IGNORE_INDEX).sum()
        for r in train
    ]
    assert any(cut) and not all(cut)  # some responses truncated, some whole
    return model, tok, train, targets[:3]


def _run(setup, method, **kw):
    model, tok, train, targets = setup
    return attribute(
        copy.deepcopy(model),
        train,
        targets,
        tokenizer=tok,
        method=method,
        level="token",
        max_length=MAX_LENGTH,
        shard_size=3,
        method_params={"train_batch_size": 4},
        **kw,
    )


@pytest.mark.parametrize("method", ["ekfac", "kfac", "diagonal", "identity"])
def test_token_rows_sum_to_example_scores(setup, method):
    res = _run(setup, method, token_targets="each")
    sums = res.token_scores.groupby(["train_id", "target_id"]).score.sum()
    example = res.scores.set_index(["train_id", "target_id"]).score.reindex(sums.index)
    assert len(sums) == len(res.scores) and example.abs().min() > 0
    np.testing.assert_allclose(sums, example, rtol=1e-4, atol=0)


def test_group_rows_sum_to_the_groups_mean_score(setup):
    res = _run(setup, "ekfac")  # token_targets="groups": all + one per domain
    _, _, _, targets = setup
    sums = res.token_scores.groupby(["train_id", "target_id"]).score.sum()
    for key, ids in {
        "all": [t["example_id"] for t in targets],
        **{
            f"domain={d}": [t["example_id"] for t in targets if t["domain"] == d]
            for d in {t["domain"] for t in targets}
        },
    }.items():
        mean = res.scores[res.scores.target_id.isin(ids)].groupby("train_id").score.mean()
        np.testing.assert_allclose(sums.xs(key, level="target_id").reindex(mean.index), mean, rtol=1e-4)


def _hand_token_scores(model, tok, record, target_records):
    """<grad m, grad l_t> / n for every predicted response token, by reverse-mode autograd one token at
    a time (identity Hessian, MLP parameters; m = minus the target's mean log-likelihood)."""
    names = select_modules(model, "mlp")
    params = [model.get_submodule(n).weight for n in names]

    def logits_of(enc):
        return model(input_ids=enc["input_ids"][None], attention_mask=enc["attention_mask"][None]).logits[0]

    grads_m = []
    for rec in target_records:
        enc = encode_sft(tok, rec, MAX_LENGTH)
        m = example_loss(logits_of(enc)[None], enc["labels"][None], "mean")[0]
        grads_m.append(torch.autograd.grad(m, params))
    enc = encode_sft(tok, record, MAX_LENGTH)
    logits = logits_of(enc)
    predicted = [t for t in range(1, len(enc["labels"])) if enc["labels"][t] != IGNORE_INDEX]
    out = np.zeros((len(target_records), len(predicted)))
    for j, t in enumerate(predicted):
        loss_t = torch.nn.functional.cross_entropy(logits[t - 1], enc["input_ids"][t]) / len(predicted)
        grad_t = torch.autograd.grad(loss_t, params, retain_graph=True)
        for q, g_m in enumerate(grads_m):
            out[q, j] = sum((a * b).sum() for a, b in zip(g_m, grad_t, strict=True)).item()
    return out, enc


def test_identity_rows_equal_a_hand_computation(setup):
    model, tok, train, targets = setup
    res = _run(setup, "identity", token_targets="each")
    hand_model = copy.deepcopy(model).float()
    for rec in train:
        hand, enc = _hand_token_scores(hand_model, tok, rec, targets)
        rows = res.token_scores[res.token_scores.train_id == rec["example_id"]]
        response_tokens = int((enc["labels"] != IGNORE_INDEX).sum())
        for q, target in enumerate(targets):
            ours = rows[rows.target_id == target["example_id"]].sort_values("position")
            # one row per predicted response token (no prompt or template token), in order
            assert list(ours.position) == list(range(response_tokens)) == list(range(hand.shape[1]))
            assert np.corrcoef(ours.score, hand[q])[0, 1] >= 0.999
            np.testing.assert_allclose(ours.score, hand[q], rtol=1e-3, atol=1e-4 * np.abs(hand[q]).max())


def test_token_rows_carry_the_predicted_token(setup):
    _, tok, train, targets = setup
    res = _run(setup, "identity", token_targets="each")
    tokens, segments = (
        frame[frame.target_id == targets[0]["example_id"]] for frame in (res.token_scores, res.segment_scores)
    )
    for rec in train:
        enc = encode_sft(tok, rec, MAX_LENGTH)
        ids = enc["input_ids"][enc["labels"] != IGNORE_INDEX].tolist()
        rows = tokens[tokens.train_id == rec["example_id"]].sort_values("position")
        assert rows.token_id.tolist() == ids
        text = rec["response"]
        inside = rows[rows.char_end > rows.char_start]
        assert [text[a:b] for a, b in zip(inside.char_start, inside.char_end)] == inside.token.tolist()
        kept = "".join(inside.token)
        assert text.startswith(kept) and len(kept) > 0
        truncated = len(kept) < len(text)
        end_of_turn = rows[rows.token == "<eos>"]
        if not truncated:  # the template's end-of-turn token closes a whole response, at its end
            assert len(end_of_turn) == 1 and (end_of_turn.char_start == len(text)).all()
        segs = segments[segments.train_id == rec["example_id"]]
        assert segs.char_end.max() <= len(kept)  # no row for text cut off by max_length


def test_empty_target_set_is_one_line_error(setup):
    model, tok, train, _ = setup
    with pytest.raises(ValueError, match="no target examples") as err:
        attribute(model, train, [], tokenizer=tok, method="ekfac")
    assert "\n" not in str(err.value)


def test_only_correct_keeps_the_targets_the_model_answers(setup):
    model, tok, train, targets = setup
    answered = generate(model, tok, targets[:1], max_new_tokens=24)[0]
    right = {**targets[0], "example_id": "right", "response": answered}
    wrong = {**targets[1], "example_id": "wrong", "response": answered + " and more"}
    kw = {"tokenizer": tok, "method": "identity", "only_correct": True, "max_new_tokens": 24}
    res = attribute(model, train[:4], [right, wrong], **kw)
    assert set(res.scores.target_id) == {"right"}
    with pytest.raises(ValueError, match="answers none of the 1 targets") as err:
        attribute(model, train[:4], [wrong], **kw)
    assert "\n" not in str(err.value)
