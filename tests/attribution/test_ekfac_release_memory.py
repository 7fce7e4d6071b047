"""kronfluence's per-phase `gc.collect()` is skipped on CPU (attribution/ekfac.py release_memory_unless_cpu)
and kept when a CUDA device is in use."""

import copy
import gc
import tempfile

import pytest
import torch
from tiny_lm import eager_lm

from attribution import ekfac
from attribution.ekfac import InfluenceConfig, InfluenceScorer
from attribution.lm_data import collate
from attribution.tasks import CausalLMTask, select_modules


@pytest.fixture(scope="module")
def lm(trained_dir, tokenizer, records):
    model, items = eager_lm(trained_dir, tokenizer, records, 8)
    return model, items, tokenizer


@pytest.fixture
def collections(monkeypatch):
    """Counts explicit gc.collect() calls (kronfluence calls it as gc.collect)."""
    calls = []
    real = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(a) or real(*a))
    return calls


def test_no_collection_per_phase_on_cpu(lm, collections):
    model, items, tok = lm
    kronfluence_own = ekfac.kronfluence_release_memory
    kronfluence_own()  # why: kronfluence's own release_memory collects every time it is called
    assert len(collections) == 1
    collections.clear()
    with tempfile.TemporaryDirectory() as tmp:
        scorer = InfluenceScorer(
            copy.deepcopy(model),
            CausalLMTask(select_modules(model, "mlp")),
            tmp,
            InfluenceConfig(train_batch_size=4),
            torch.device("cpu"),
            lambda b: collate(b, tok.pad_token_id),
        )
        scorer.fit(items)  # covariance, eigendecomposition, lambda: a release after each phase
        scores = scorer.score(items[:2], items)  # precondition, then dot products with a release
    assert scores.shape == (2, 8) and bool(torch.isfinite(scores).all())
    assert collections == []
    import kronfluence.computer.computer
    import kronfluence.score.dot_product

    assert kronfluence.computer.computer.release_memory is ekfac.release_memory_unless_cpu
    assert kronfluence.score.dot_product.release_memory is ekfac.release_memory_unless_cpu


def test_full_release_when_cuda_is_in_use(monkeypatch):
    released = []
    monkeypatch.setattr(ekfac, "kronfluence_release_memory", lambda: released.append(1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    ekfac.release_memory_unless_cpu()
    assert released == [1]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # CUDA present, the run on CPU
    ekfac.release_memory_unless_cpu()
    assert released == [1]
