"""PPP: the number of clusters on Gaussian blobs, independence from seeds and row order, the parts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from curation.ppp import PPP, agreement


@pytest.fixture(autouse=True)
def one_blas_thread():
    # the machine's 2 cores are shared: threaded BLAS on small matrices only waits for its siblings
    with threadpool_limits(1):
        yield


def blobs(k: int, d: int, per: int = 150, sep: float = 8.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k unit-variance Gaussian blobs in d dimensions whose centres are at least `sep` apart."""
    rng = np.random.default_rng(seed)
    box = sep * max(k, 2) ** (1 / min(d, 3)) * 1.2
    while True:
        centres = rng.uniform(-box, box, (k, d))
        gaps = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) + np.eye(k) * 1e9
        if gaps.min() >= sep:
            break
    y = np.repeat(np.arange(k), per)
    return centres[y] + rng.normal(size=(k * per, d)), y


# k from 2 to 12 in 2 to 50 dimensions: a representative grid of the sweep we ran (8 k x 5 d x 6 seeds)
@pytest.mark.parametrize(
    ("k", "d", "seed"),
    [(2, 2, 0), (3, 50, 1), (4, 5, 2), (6, 20, 3), (8, 2, 4), (10, 10, 5), (12, 2, 6), (12, 50, 7)],
)
def test_blobs_right_number_of_clusters(k, d, seed):
    X, y = blobs(k, d, seed=seed)
    model = PPP().fit(X)
    assert model.n_clusters_ == k
    assert adjusted_rand_score(y, model.labels_) >= 0.95


def test_identical_labels_for_ten_seeds():
    X, _ = blobs(7, 10, seed=3)
    first = PPP(random_state=0).fit_predict(X)
    for seed in range(1, 10):
        np.testing.assert_array_equal(PPP(random_state=seed).fit_predict(X), first)


def test_row_order_does_not_matter():
    X, _ = blobs(5, 8, seed=11)
    perm = np.random.default_rng(0).permutation(len(X))
    labels = PPP().fit_predict(X)
    assert adjusted_rand_score(labels[perm], PPP().fit_predict(X[perm])) == 1.0


def test_one_gaussian_stays_one_cluster():
    X = np.random.default_rng(1).normal(size=(2000, 10)) * np.linspace(1, 4, 10)
    model = PPP().fit(X)
    assert model.n_clusters_ == 1
    assert model.most_separable_ is None
    assert model.tree_[0].reason == "BIC prefers one component"


def test_three_blobs_in_a_row():
    # principal-direction bisection cut at the mean slices the middle blob
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 200)
    X = np.array([[-10.0, 0.0], [0.0, 0.0], [10.0, 0.0]])[y] + rng.normal(size=(600, 2))
    model = PPP().fit(X)
    assert model.n_clusters_ == 3
    assert adjusted_rand_score(y, model.labels_) == 1.0


def test_predict_matches_labels_and_tree_is_recorded():
    X, _ = blobs(4, 6, seed=2)
    model = PPP().fit(X)
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    accepted = [n for n in model.tree_ if n.accepted]
    assert len(accepted) == 3 and all(n.bic_gain > 0 and n.agreement >= 0.9 for n in accepted)
    assert model.most_separable_ == max(accepted, key=lambda n: n.bic_gain).path
    assert sorted(p for paths in model.cluster_paths_ for p in paths) == sorted(
        n.path for n in model.tree_ if not n.accepted
    )
    assert clone(model).get_params() == model.get_params()


def test_thresholds_are_parameters():
    X, _ = blobs(4, 6, seed=2)
    assert PPP(min_cluster_size=400).fit(X).n_clusters_ == 1  # halves of 300 are too small
    assert PPP(bic_margin=1e9).fit(X).n_clusters_ == 1
    assert PPP(max_clusters=2).fit(X).n_clusters_ == 2


def test_large_data_path_minibatch_and_sampled_gmm():
    X, y = blobs(6, 16, per=1500, seed=9)
    model = PPP(minibatch_threshold=2000, sample_size=1500).fit(X.astype(np.float32))
    assert model.n_clusters_ == 6
    assert adjusted_rand_score(y, model.labels_) >= 0.99


def test_agreement_nested_and_exact():
    km = np.array([0] * 6 + [1] * 4)
    carve = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])  # the GMM moves half of one k-means half
    assert agreement(km, carve, nested=False) == pytest.approx(0.7)
    assert agreement(km, carve, nested=True, min_size=2) == 1.0
    assert agreement(km, 1 - km) == 1.0  # component names do not matter
    stray = np.array([0] * 9 + [1])  # one GMM component of a single point: no carving
    assert agreement(km, stray, nested=True, min_size=2) == agreement(km, stray, nested=False)


@pytest.mark.parametrize("covariance_type", ["full", "spherical"])
def test_other_covariance_types(covariance_type):
    X, y = blobs(4, 3, per=200, seed=12)
    model = PPP(covariance_type=covariance_type).fit(X)
    assert model.n_clusters_ == 4
    assert adjusted_rand_score(y, model.labels_) >= 0.95
