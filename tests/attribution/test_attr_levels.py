"""Example / segment / token levels through the Python API, for a causal LM directory and plain modules."""

import numpy as np
import pandas as pd
import pytest
import torch
from trak.modelout_functions import ImageClassificationModelOutput

from attribution.api import attribute
from attribution.engine import check_level
from attribution.segments import split_segments, token_segments
from attribution.tasks import FunctionTask, classification_task


@pytest.fixture(scope="module")
def token_run(trained_dir, records, targets):
    torch.set_num_threads(1)
    return attribute(trained_dir, records[:10], targets, method="ekfac", level="token", shard_size=4)


def test_every_method_scores_every_pair(trained_dir, records, targets):
    torch.set_num_threads(1)
    for method in ("ekfac", "kfac", "diagonal", "identity", "trak", "gradsim"):
        params = {"proj_dim": 128} if method in ("trak", "gradsim") else None
        res = attribute(
            trained_dir, records[:6], targets[:3], method=method, method_params=params, shard_size=4
        )
        assert len(res.scores) == 6 * 3, method
        assert set(res.scores.train_id) == {r["example_id"] for r in records[:6]}
        assert np.isfinite(res.scores.score).all() and res.scores.score.abs().sum() > 0, method


def test_token_level_is_consistent_with_segments_and_examples(token_run, trained_dir, records, targets):
    res = token_run
    # example scores at token level equal a plain example-level run
    plain = attribute(trained_dir, records[:10], targets, method="ekfac", shard_size=10)
    merged = res.scores.merge(plain.scores, on=["train_id", "target_id"])
    np.testing.assert_allclose(
        merged.score_x, merged.score_y, rtol=1e-3, atol=1e-3 * merged.score_y.abs().max()
    )
    # target groups: all + one per domain
    assert set(res.token_scores.target_id) == {"all", "domain=math", "domain=code"}
    # tokens are the response's own text, in order
    rec = records[0]
    toks = res.token_scores.query("train_id == @rec['example_id'] and target_id == 'all'").sort_values(
        "position"
    )
    assert "".join(toks.token).startswith(rec["response"])
    # a segment's score is the sum of its tokens' scores (tokens placed by their character spans)
    spans = split_segments(rec["response"], "lines")
    segs = res.segment_scores.query("train_id == @rec['example_id'] and target_id == 'all'").sort_values(
        "segment"
    )
    assert list(segs.text) == [rec["response"][a:b] for a, b in spans]
    seg_of = token_segments(toks[["char_start", "char_end"]].to_numpy(), spans)
    outside = toks[seg_of < 0]  # only line breaks and the end-of-sequence token belong to no segment
    assert ((outside.token.str.strip() == "") | (outside.char_start == len(rec["response"]))).all()
    for g in range(len(spans)):
        assert segs.score.iloc[g] == pytest.approx(
            toks.score.to_numpy()[seg_of == g].sum(), rel=1e-6, abs=1e-6
        )
    # the 'all' group is the mean over targets, per token
    grp = res.token_scores.pivot_table(index=["train_id", "position"], columns="target_id", values="score")
    n_math = sum(t["domain"] == "math" for t in targets)
    mix = (grp["domain=math"] * n_math + grp["domain=code"] * (len(targets) - n_math)) / len(targets)
    np.testing.assert_allclose(grp["all"], mix, rtol=1e-6, atol=1e-9)


def test_segment_level_per_target_and_sentences(trained_dir, records, targets):
    res = attribute(
        trained_dir,
        records[:4],
        targets[:2],
        method="identity",
        level="segment",
        segmenter="sentences",
        token_targets="each",
    )
    assert res.token_scores is None
    assert set(res.segment_scores.target_id) == {t["example_id"] for t in targets[:2]}
    first = res.segment_scores.query("train_id == @records[0]['example_id']")
    assert first.text.str.len().gt(0).all()


def test_levels_other_than_example_need_per_token_methods():
    with pytest.raises(ValueError, match="per-token"):
        check_level("trak", "token")
    with pytest.raises(ValueError, match="unknown level"):
        check_level("ekfac", "paragraph")


def test_segments_split_lines_and_sentences():
    text = "First 2 + 3 = 5.\n\nThen 5 * 2 = 10. So 10!\n"
    assert [text[a:b] for a, b in split_segments(text, "lines")] == [
        "First 2 + 3 = 5.",
        "Then 5 * 2 = 10. So 10!",
    ]
    assert [text[a:b] for a, b in split_segments(text, "sentences")] == [
        "First 2 + 3 = 5.",
        "Then 5 * 2 = 10.",
        "So 10!",
    ]
    other = "a; b"
    assert [other[a:b] for a, b in split_segments(other, r";")] == ["a", "b"]


# ---------------------------------------------------------------- plain torch modules


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 5)) + np.eye(3, 5)[y] * 1.5  # overlapping classes: no loss saturates
    return [(torch.tensor(a, dtype=torch.float32), torch.tensor(b)) for a, b in zip(x, y)]


@pytest.fixture(scope="module")
def mlp_setup():
    torch.manual_seed(0)
    train, targets = _blobs(40, 0), _blobs(6, 1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.stack([a for a, _ in train]), torch.stack([b for _, b in train])
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), train, targets


@pytest.mark.parametrize("method", ["ekfac", "gradsim", "trak"])
def test_plain_mlp_same_class_examples_help_most(mlp_setup, method):
    model, train, targets = mlp_setup
    # TRAK with fewer features than training examples (40 here): above that its kernel is singular, the
    # ridge decides, and on this tiny MLP the sign of the comparison follows the projection's seed.
    params = {"trak": {"proj_dim": 16}, "gradsim": {"proj_dim": 64}}.get(method, {"fisher_samples": 5})
    res = attribute(
        model,
        train,
        targets,
        task=classification_task(),
        method=method,
        method_params=params,
        trak_output=ImageClassificationModelOutput(),
    )
    mat = (
        res.matrix()
        .loc[[str(i) for i in range(len(train))], [str(i) for i in range(len(targets))]]
        .to_numpy()
    )
    same = np.array([[int(tr[1]) == int(tg[1]) for tg in targets] for tr in train])
    assert mat[same].mean() > mat[~same].mean()


class Tagger(torch.nn.Module):
    """A sequence tagger: one label per token from the token and the mean of the tokens before it, so a
    token's loss depends on its neighbours (per-token influence is not a per-position split)."""

    def __init__(self, vocab=12, dim=8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, 2)

    def forward(self, ids):
        h = torch.tanh(self.mix(self.emb(ids)))
        context = h.cumsum(1) / torch.arange(1, ids.shape[1] + 1).view(1, -1, 1)
        return self.head(h + context)


def _tag_losses(model, batch):
    ids, y = batch
    logits = model(ids)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (B x T)


def test_plain_sequence_module_token_and_segment_levels():
    torch.manual_seed(0)
    vocab = ["a", "b", "c", ".", "\n", "x", "y", "z", "!", " ", "q", "r"]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(vocab), size=(12, 6))
    labels = np.cumsum(ids == 0, 1) > np.cumsum(ids == 1, 1)  # more a's than b's so far
    items = [(torch.tensor(i), torch.tensor(lab.astype(np.int64))) for i, lab in zip(ids, labels)]
    task = FunctionTask(
        loss=lambda m, b: _tag_losses(m, b).mean(1),
        target=lambda m, b: -_tag_losses(m, b).mean(1),
        tracked_modules=["mix", "head"],
        token_loss=lambda m, b: _tag_losses(m, b) / b[0].shape[1],  # each token's share of the mean
    )
    tokens = [[vocab[t] for t in row] for row in ids]
    res = attribute(Tagger(), items, items[:3], task=task, method="ekfac", level="token", train_tokens=tokens)
    tok = res.token_scores.query("target_id == 'all'").groupby("train_id").score.sum()
    ex = res.scores.groupby("train_id").score.mean()
    pd.testing.assert_series_equal(tok.sort_index(), ex.sort_index(), check_names=False, rtol=1e-4, atol=1e-6)
    assert len(res.token_scores.query("target_id == 'all'")) == 12 * 6
    assert res.segment_scores is not None and len(res.segment_scores) > 0
    # a classifier's loss has no per-token terms: no token level without a token_loss
    with pytest.raises(ValueError, match="token_loss"):
        attribute(Tagger(), items, items[:3], task=classification_task(), level="token", train_tokens=tokens)


def test_function_task_for_any_module(mlp_setup):
    model, train, targets = mlp_setup

    def loss(m, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(m(x), y, reduction="none")

    task = FunctionTask(loss, target=lambda m, b: -loss(m, b))
    res = attribute(model, train, targets, task=task, method="kfac")
    assert res.matrix().shape == (len(train), len(targets))
