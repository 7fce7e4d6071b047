"""TRAK / gradsim projections: chunked projection gives the per-batch numbers with fewer, larger
projections; the factored (Kronecker) projection is the map its docstring defines."""

import copy
import tempfile
from unittest import mock

import numpy as np
import pytest
import torch
from tiny_lm import eager_lm
from trak.projectors import BasicProjector

from attribution.api import attribute
from attribution.gradsim import GradSimConfig, GradSimScorer
from attribution.lm_data import collate
from attribution.lm_loss import example_loss, forward_logits
from attribution.trak_adapter import (
    CachedProjector,
    CausalLMModelOutput,
    FactoredProjector,
    TrakConfig,
    TrakScorer,
    chunk_rows,
    factored_dims,
    lm_batch,
)


@pytest.fixture(scope="module")
def lm(trained_dir, tokenizer, records):
    model, items = eager_lm(trained_dir, tokenizer, records, 20)
    names = [n for n, _ in model.named_parameters() if ".mlp." in n]
    return model, items, tokenizer, names


def _trak(lm, tmp, **config):
    model, _, tok, names = lm
    scorer = TrakScorer(
        copy.deepcopy(model),
        CausalLMModelOutput(),
        tmp,
        TrakConfig(proj_dim=64, **config),
        torch.device("cpu"),
        lm_batch,
        lambda b: collate(b, tok.pad_token_id),
        names,
    )
    return scorer


def test_trak_chunks_project_once_per_chunk_with_per_batch_numbers(lm):
    """20 training items, gradients 4 at a time: projected in chunks of 16 (2 projections for the
    training set, 1 for 6 targets) the scores equal those of projecting every batch of 4 (5 + 2)."""
    _, items, _, _ = lm
    out, calls = [], []
    for rows in (4, 16):
        with tempfile.TemporaryDirectory() as tmp:
            scorer = _trak(lm, tmp, batch_size=4, projection_rows=rows)
            with (
                mock.patch.object(BasicProjector, "project", autospec=True) as regenerate,
                mock.patch.object(
                    CachedProjector, "project", autospec=True, side_effect=CachedProjector.project
                ) as project,
            ):
                scorer.fit(items, items[:6], [lm[0].state_dict()])
            regenerate.assert_not_called()  # cached: the matrix is generated once, not per chunk
            calls.append(project.call_count)
            out.append(scorer.score(range(len(items))))
    assert calls == [5 + 2, 2 + 1]
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-7)


def test_gradsim_chunks_match_per_batch_projection(lm):
    model, items, tok, names = lm

    def loss(m, b):
        return example_loss(forward_logits(m, b), b["labels"])

    out = []
    for rows in (4, 6, 16):  # 6: chunks that end inside a gradient batch (batch_size 4)
        scorer = GradSimScorer(
            copy.deepcopy(model),
            loss,
            lambda m, b: -loss(m, b),
            GradSimConfig(proj_dim=64, batch_size=4, projection_rows=rows),
            torch.device("cpu"),
            lambda b: collate(b, tok.pad_token_id),
            names,
        )
        assert scorer.rows == rows
        scorer.fit(items[:6])
        out.append(scorer.score(items))
        assert out[-1].shape == (6, len(items))
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0], out[2], rtol=1e-5, atol=1e-6)


def test_chunk_rows_bounded_by_the_gradient_buffer():
    assert chunk_rows(1000, 64, 8) == 64
    assert chunk_rows(2**20, 64, 8, buffer_mb=64) == 16  # 16 rows of 4 MiB gradients
    assert chunk_rows(2**30, 64, 8, buffer_mb=64) == 8  # never below one gradient batch


def test_factored_dims_share_proj_dim_and_fit_each_parameter():
    shapes = {"up": (256, 64), "down": (64, 256), "bias": (5,), "tiny": (2, 3)}
    plan = factored_dims(shapes, 300)
    assert list(plan) == list(shapes)
    assert sum(k for k, _, _ in plan.values()) == 300
    assert plan["bias"][0] == 5 and plan["tiny"][0] == 6  # smaller than their share: kept whole
    for name, (k, k_out, k_in) in plan.items():
        d_out = shapes[name][0]
        d_in = int(np.prod(shapes[name][1:])) if len(shapes[name]) > 1 else 1
        assert k <= k_out * k_in and k_out <= d_out and k_in <= d_in
    with pytest.raises(ValueError, match="exceeds"):
        factored_dims({"w": (3, 3)}, 10)


def test_factored_projection_is_the_kronecker_map():
    """Each parameter's features are the first k entries of (A kron B) vec(G) (row-major vec), i.e. of
    A G B^T; parameters are laid out in their own order; other model ids draw other matrices."""
    shapes = {"w": (6, 5), "conv": (4, 2, 3), "b": (7,)}
    proj = FactoredProjector(shapes, proj_dim=20, seed=3)
    grads = {n: torch.randn(2, *s, dtype=torch.float64).float() for n, s in shapes.items()}
    got = proj.project(grads, model_id=0)
    assert got.shape == (2, 20)
    expected, mats = [], proj.matrices(0)
    for name, (k, _, _) in proj.plan.items():
        a, b = mats[name]
        kron = torch.kron(a, b)  # (k_out k_in) x (d_out d_in)
        flat = grads[name].reshape(2, -1)
        expected.append((flat @ kron.T)[:, :k])
    torch.testing.assert_close(got, torch.cat(expected, dim=1), rtol=1e-5, atol=1e-5)
    again = FactoredProjector(shapes, proj_dim=20, seed=3).project(grads, model_id=0)
    torch.testing.assert_close(again, got)
    assert not torch.allclose(proj.project(grads, model_id=1), got)
    with pytest.raises(TypeError):
        proj.project(torch.randn(2, 30 + 24 + 7), model_id=0)


def test_trak_with_factored_projection_end_to_end(trained_dir, records):
    """Through the public API: every pair scored, and each training example helps itself most often."""
    torch.set_num_threads(1)
    res = attribute(
        trained_dir,
        records[:12],
        records[:12],
        method="trak",
        method_params={"proj_dim": 64, "projection": "factored"},
    )
    mat = res.matrix()
    assert mat.shape == (12, 12) and np.isfinite(mat.to_numpy()).all()
    assert (np.diag(mat.loc[mat.columns, mat.columns].to_numpy()) > 0).all()
