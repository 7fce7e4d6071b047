"""PPP: probabilistic partitive partitioning (arXiv 2003.04372), as *we read it*.

Only the paper's abstract could be confirmed: k-means partitions the data, a Gaussian mixture
model validates the partitions, the result does not depend on initial conditions and no number of
clusters is given. Everything below is our reading (see ../shared/METHODS.md), with every
threshold a parameter:

1. Top-down: start with one cluster. A candidate cluster is split in two by 2-means whose starting
   points are deterministic: for each of the `n_directions` leading principal directions, the
   cluster is cut at the mean and at the deepest valley of the projected density; Lloyd runs from
   each cut and the split with the lowest within-cluster sum of squares wins. Cutting only at the
   mean (classic principal-direction bisection) slices through the middle blob of three in a row,
   a fixed point Lloyd never leaves; the density valley does not.
2. The split is validated with a 2-component GMM initialised from the two halves. It is accepted
   when BIC prefers two components to one by more than `bic_margin`, the GMM's labels agree with
   the k-means labels on at least `min_agreement` of the points, and both halves have at least
   `min_cluster_size` points (and a `min_cluster_fraction` of all points). "Agree" is by default
   *nested* agreement (see `agreement()`): on a node that still holds several clusters the GMM
   often settles on another clean 2-partition (one cluster against the rest) that only refines
   one k-means half; plain agreement would then stop the descent far too early (we measured it
   on blobs: 1 cluster found for 6 or 8).
3. Accepted halves are split again; rejected clusters are final. The number of clusters falls out.
   The "most separable set" is the accepted split with the largest BIC gain (`most_separable_`).
4. Large clusters (more than `minibatch_threshold` points) are split with MiniBatchKMeans started
   from the best cut of a deterministic sample, and the GMMs are fitted on a sample of at most
   `sample_size` points; every point is then assigned by the final 2-means hyperplane.
5. (ours) A hard cut high in the tree leaves tail points of a cluster on the wrong side, for
   good; on large data they are many, they form small clusters of their own and make BIC split
   the cluster they landed in. So after the descent: Lloyd over all leaves at once, started from
   their means, moves them back; then each cluster is merged with its nearest neighbour when the
   pair fails the split test (BIC, agreement, sizes), and the two steps repeat until nothing
   merges. On well separated data nothing merges and the tree's count stands.

The labels are k-means labels (the GMM only validates). Clusters are numbered in the order of
their path in the tree (left before right), so the numbering is deterministic too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import MiniBatchKMeans
from sklearn.mixture import GaussianMixture
from sklearn.utils.validation import check_is_fitted, validate_data


@dataclass
class Node:
    """One candidate cluster in the bisection tree."""

    path: str  # "" is the root; "0"/"1" appended per split (left/right)
    size: int
    accepted: bool = False
    reason: str = ""  # why a split was rejected ("" when accepted)
    bic_gain: float = float("nan")  # BIC(1 component) - BIC(2 components)
    agreement: float = float("nan")  # share of points where GMM and k-means labels agree
    centers: np.ndarray | None = field(default=None, repr=False)  # the two 2-means centres


def _strided(n: int, m: int) -> np.ndarray:
    """m evenly spaced indices of range(n): a sample that needs no random seed."""
    if n <= m:
        return np.arange(n)
    return np.linspace(0, n - 1, m).round().astype(np.int64)


def _hyperplane_labels(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Nearest-centre labels for two centres: one matrix-vector product."""
    w = centers[1] - centers[0]
    b = 0.5 * (centers[1] @ centers[1] - centers[0] @ centers[0])
    return (X @ w > b).astype(np.int64)


def _lloyd2(X: np.ndarray, centers: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, float]:
    """Exact 2-means from the given centres; returns the centres and the within-cluster SSE.

    Sums per side come from one matrix-vector product (side 1) and the total (side 0): no copies."""
    centers = np.asarray(centers, dtype=np.float64).copy()
    total = X.sum(axis=0, dtype=np.float64)
    scale = max(float(np.mean(np.var(X, axis=0))), 1e-300)
    n = len(X)
    for _ in range(max_iter):
        lab = _hyperplane_labels(X, centers)
        n1 = int(lab.sum())
        if n1 in (0, n):
            break
        s1 = (lab.astype(X.dtype) @ X).astype(np.float64)
        new = np.stack([(total - s1) / (n - n1), s1 / n1])
        shift = float(np.sum((new - centers) ** 2))
        centers = new
        if shift <= tol * scale:
            break
    lab = _hyperplane_labels(X, centers)
    n1 = int(lab.sum())
    s1 = (lab.astype(X.dtype) @ X).astype(np.float64)
    # SSE around each side's mean: sum |x|^2 - sum_j |s_j|^2 / n_j
    sse = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
    for count, sums in ((n - n1, total - s1), (n1, s1)):
        if count:
            sse -= float(sums @ sums) / count
    return centers, sse


def _nearest(X: np.ndarray, centers: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest centre for each row, in chunks to bound memory."""
    half_norms = 0.5 * np.sum(centers * centers, axis=1)
    out = np.empty(len(X), dtype=np.int64)
    for start in range(0, len(X), chunk):
        block = X[start : start + chunk]
        out[start : start + chunk] = np.argmax(block @ centers.T - half_norms, axis=1)
    return out


def _onehot(labels: np.ndarray, k: int) -> sparse.csr_matrix:
    """(k, n) indicator matrix: `_onehot(labels, k) @ X` sums the rows of each label."""
    n = len(labels)
    return sparse.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n))


def _means(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-label means (labels 0..k-1, every label present)."""
    return np.asarray(_onehot(labels, k) @ X) / np.bincount(labels, minlength=k)[:, None]


def _refine(X: np.ndarray, centers: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd over all leaves at once, from the leaf means: reassigns points that a hyperplane high
    in the tree put on the wrong side. Returns centres, labels and a mask of the leaves kept
    (a leaf that loses every point is dropped)."""
    keep = np.ones(len(centers), dtype=bool)
    labels = _nearest(X, centers)
    for _ in range(max_iter):
        counts = np.bincount(labels, minlength=len(centers))
        live = counts > 0
        new = np.asarray(_onehot(labels, len(centers)) @ X)[live] / counts[live, None]
        keep[np.flatnonzero(keep)[~live]] = False
        centers = new
        updated = _nearest(X, centers)
        if live.all() and np.array_equal(updated, labels):
            break
        labels = updated
    return centers, labels, keep


def _valley(proj: np.ndarray, bins: int) -> float | None:
    """The deepest interior minimum of a smoothed histogram of a 1-D projection, if any."""
    hist, edges = np.histogram(proj, bins=bins)
    kernel = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
    smooth = np.convolve(hist, kernel / kernel.sum(), mode="same")
    interior = [
        i
        for i in range(1, bins - 1)
        if smooth[i] <= smooth[i - 1] and smooth[i] <= smooth[i + 1] and smooth[i] < smooth.max()
    ]
    if not interior:
        return None
    # the valley that is deepest relative to the lower of the two peaks around it
    best, best_depth = None, 0.0
    for i in interior:
        depth = min(smooth[:i].max(), smooth[i + 1 :].max()) - smooth[i]
        if depth > best_depth:
            best, best_depth = i, depth
    return None if best is None else 0.5 * (edges[best] + edges[best + 1])


def agreement(
    kmeans_labels: np.ndarray, gmm_labels: np.ndarray, nested: bool = True, min_size: int = 1
) -> float:
    """Agreement of two 2-partitions, up to swapping the GMM's component names.

    exact: the share of points with the same label. nested: 1 - (the smaller disagreement cell) / n,
    which is 1 when the GMM only carves one k-means half further; it needs both GMM components to
    hold at least `min_size` points, else (a cluster plus a few stray points) the exact share."""
    n = len(kmeans_labels)
    table = np.zeros((2, 2))
    np.add.at(table, (kmeans_labels, gmm_labels), 1)
    if table[0, 0] + table[1, 1] < table[0, 1] + table[1, 0]:
        table = table[:, ::-1]
    exact = float(table[0, 0] + table[1, 1]) / n
    if nested and table.sum(axis=0).min() >= min_size:
        return 1.0 - float(min(table[0, 1], table[1, 0])) / n
    return exact


def _gmm_precisions(X: np.ndarray, lab: np.ndarray, covariance_type: str, reg: float) -> np.ndarray:
    """Precision matrices of the two k-means halves, in scikit-learn's per-type layout."""
    parts = [X[lab == j] for j in (0, 1)]
    if covariance_type == "diag":
        return np.stack([1.0 / (p.var(axis=0) + reg) for p in parts])
    if covariance_type == "spherical":
        return np.array([1.0 / (p.var(axis=0).mean() + reg) for p in parts])
    if covariance_type == "full":
        eye = np.eye(X.shape[1])
        return np.stack(
            [np.linalg.inv(np.atleast_2d(np.cov(p, rowvar=False, bias=True)) + reg * eye) for p in parts]
        )
    raise ValueError(f"covariance_type must be 'diag', 'spherical' or 'full', got {covariance_type!r}")


class PPP(ClusterMixin, BaseEstimator):
    """Top-down clustering: deterministic 2-means splits validated by a 2-component GMM.

    Parameters (defaults are ours; the paper's could not be read)
    ----------
    min_cluster_size, min_cluster_fraction : the smallest cluster is the larger of a count (10)
        and a fraction of all points (0.002). A split is rejected when a half would be smaller, and
        a GMM component smaller than that is no cluster (see `agreement`). The fraction matters on
        large data: there a cut high in the tree strands hundreds of tail points of a cluster on
        the wrong side, enough for BIC to see a second component.
    min_agreement : least share of points on which the GMM's and k-means' labels agree (0.9).
    bic_margin : BIC(1 component) - BIC(2 components) must exceed this (0.0).
    covariance_type : GMM covariance, "diag" (default), "spherical" or "full". "full" needs many
        more points than dimensions per cluster.
    max_clusters : stop splitting at this many clusters (64).
    agreement : how GMM and k-means labels are compared (see `agreement()`). "nested" (default):
        the GMM may carve one k-means half further (on a node holding several clusters, one
        cluster against the rest is as plausible a 2-partition as the k-means cut) but must not
        cross the cut both ways, and both its components must be of cluster size (a single
        cluster plus a few stray points is no split). "exact": the plain share of
        points with the same label.
    n_directions : principal directions tried as starting cuts (2).
    valley_bins : histogram bins for the density-valley cut (32).
    kmeans_max_iter, kmeans_tol : Lloyd iterations and relative centre-shift tolerance.
    gmm_max_iter, gmm_tol, reg_covar : passed to scikit-learn's GaussianMixture.
    sample_size : most points a GMM (and the starting cuts on large clusters) are fitted on (20000).
    minibatch_threshold : clusters larger than this use MiniBatchKMeans (100000).
    batch_size : MiniBatchKMeans batch size (4096).
    refine_iter : Lloyd iterations over all final clusters at once, started from the leaf means
        (10; 0 keeps the tree's own assignment).
    merge : after refining, merge each cluster with its nearest neighbour while the pair fails the
        split test (True).
    random_state : seeds MiniBatchKMeans' batch order only; small data never touch it.

    Attributes
    ----------
    labels_, n_clusters_, cluster_centers_ (the centres labels_ are nearest to), tree_ (list of
    Node, one per candidate cluster), cluster_paths_ (the tree leaves behind each cluster),
    merges_ (pairs of leaf groups merged afterwards), most_separable_ (the path of the accepted
    split with the largest BIC gain, None when nothing was split).
    """

    def __init__(
        self,
        min_cluster_size: int = 10,
        min_cluster_fraction: float = 0.002,
        min_agreement: float = 0.9,
        bic_margin: float = 0.0,
        covariance_type: str = "diag",
        max_clusters: int = 64,
        agreement: str = "nested",
        n_directions: int = 2,
        valley_bins: int = 32,
        kmeans_max_iter: int = 100,
        kmeans_tol: float = 1e-8,
        gmm_max_iter: int = 200,
        gmm_tol: float = 1e-4,
        reg_covar: float = 1e-6,
        sample_size: int = 20_000,
        minibatch_threshold: int = 100_000,
        batch_size: int = 4096,
        refine_iter: int = 10,
        merge: bool = True,
        random_state: int | None = 0,
    ) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_cluster_fraction = min_cluster_fraction
        self.min_agreement = min_agreement
        self.bic_margin = bic_margin
        self.covariance_type = covariance_type
        self.max_clusters = max_clusters
        self.agreement = agreement
        self.n_directions = n_directions
        self.valley_bins = valley_bins
        self.kmeans_max_iter = kmeans_max_iter
        self.kmeans_tol = kmeans_tol
        self.gmm_max_iter = gmm_max_iter
        self.gmm_tol = gmm_tol
        self.reg_covar = reg_covar
        self.sample_size = sample_size
        self.minibatch_threshold = minibatch_threshold
        self.batch_size = batch_size
        self.refine_iter = refine_iter
        self.merge = merge
        self.random_state = random_state

    # -- one split -----------------------------------------------------------------------
    def _initial_cuts(self, S: np.ndarray) -> list[np.ndarray]:
        """Deterministic starting centre pairs from the leading principal directions of S."""
        mean = S.mean(axis=0)
        C = S - mean
        # eigenvectors of the covariance (d x d): cheaper than an SVD of S for tall data
        evals, evecs = np.linalg.eigh(C.T @ C)
        order = np.argsort(evals)[::-1][: self.n_directions]
        starts = []
        for j in order:
            if evals[j] <= 1e-12 * max(evals.max(), 1e-300):
                continue
            v = evecs[:, j]
            v = v * np.sign(v[np.argmax(np.abs(v))])  # fix the sign: results must not depend on it
            proj = C @ v
            cuts = [0.0]
            valley = _valley(proj, self.valley_bins)
            if valley is not None:
                cuts.append(valley)
            for t in cuts:
                left = proj <= t
                if left.all() or not left.any():
                    continue
                starts.append(np.stack([S[left].mean(axis=0), S[~left].mean(axis=0)]))
        return starts

    def _two_means(self, X: np.ndarray) -> np.ndarray | None:
        """Best 2-means centres over the deterministic starts (MiniBatchKMeans on large data)."""
        large = len(X) > self.minibatch_threshold
        S = X[_strided(len(X), self.sample_size)] if large else X
        best, best_sse = None, np.inf
        for start in self._initial_cuts(S):
            centers, sse = _lloyd2(S, start, self.kmeans_max_iter, self.kmeans_tol)
            if sse < best_sse - 1e-12 * abs(sse):
                best, best_sse = centers, sse
        if best is None or not large:
            return best
        mbk = MiniBatchKMeans(
            n_clusters=2,
            init=best,
            n_init=1,
            batch_size=self.batch_size,
            max_iter=self.kmeans_max_iter,
            random_state=self.random_state,
        ).fit(X)
        return mbk.cluster_centers_

    def _gmm(self, n_components: int, **init) -> GaussianMixture:
        return GaussianMixture(
            n_components=n_components,
            covariance_type=self.covariance_type,
            reg_covar=self.reg_covar,
            max_iter=self.gmm_max_iter,
            tol=self.gmm_tol,
            init_params="random_from_data",  # overridden by explicit starts where given
            random_state=0,
            **init,
        )

    def _validate(self, S: np.ndarray, lab: np.ndarray, min_size: int) -> tuple[float, float]:
        """On sample S: the BIC gain of 2 over 1 components and the GMM / k-means agreement
        (min_size: the smallest GMM component, in sample points, that counts as a cluster)."""
        sizes = np.bincount(lab, minlength=2)
        one = self._gmm(1).fit(S)
        two = self._gmm(
            2,
            weights_init=sizes / sizes.sum(),
            means_init=np.stack([S[lab == 0].mean(axis=0), S[lab == 1].mean(axis=0)]),
            precisions_init=_gmm_precisions(S, lab, self.covariance_type, self.reg_covar),
        ).fit(S)
        gain = float(one.bic(S) - two.bic(S))
        return gain, agreement(lab, two.predict(S), nested=self.agreement == "nested", min_size=min_size)

    def _split(self, X: np.ndarray, node: Node, min_size: int) -> np.ndarray | None:
        """Labels (0/1) of an accepted split of X, or None; records the decision on `node`."""
        if node.size < 2 * min_size:
            node.reason = "too small to split"
            return None
        centers = self._two_means(X)
        if centers is None:
            node.reason = "no spread"
            return None
        lab = _hyperplane_labels(X, centers)
        node.centers = centers
        sizes = np.bincount(lab, minlength=2)
        if sizes.min() < min_size:
            node.reason = f"a half has {sizes.min()} < {min_size} points"
            return None
        idx = _strided(len(X), self.sample_size)
        sample_min = max(1, int(np.ceil(min_size * len(idx) / len(X))))  # min_size on the sample's scale
        node.bic_gain, node.agreement = self._validate(X[idx], lab[idx], sample_min)
        if node.bic_gain <= self.bic_margin:
            node.reason = "BIC prefers one component"
            return None
        if node.agreement < self.min_agreement:
            node.reason = f"GMM agrees on {node.agreement:.3f} < {self.min_agreement}"
            return None
        node.accepted = True
        return lab

    # -- the tree ------------------------------------------------------------------------
    def fit(self, X, y=None) -> PPP:
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        n = len(X)
        min_size = max(int(self.min_cluster_size), int(np.ceil(self.min_cluster_fraction * n)), 1)
        # breadth first, so that `max_clusters` stops the finest splits, not a whole subtree
        queue: list[tuple[Node, np.ndarray]] = [(Node(path="", size=n), np.arange(n))]
        leaves: list[tuple[Node, np.ndarray]] = []
        self.tree_: list[Node] = []
        while queue:
            node, idx = queue.pop(0)
            self.tree_.append(node)
            if len(leaves) + len(queue) + 1 >= self.max_clusters:
                node.reason = "max_clusters reached"
                leaves.append((node, idx))
                continue
            lab = self._split(X[idx], node, min_size)
            if lab is None:
                leaves.append((node, idx))
                continue
            for side in (0, 1):
                part = idx[lab == side]
                queue.append((Node(path=node.path + str(side), size=len(part)), part))
        leaves.sort(key=lambda leaf: leaf[0].path)
        labels = np.empty(n, dtype=np.int64)
        for k, (_, idx) in enumerate(leaves):
            labels[idx] = k
        members = [[node.path] for node, _ in leaves]  # tree leaves behind each final cluster
        self.merges_: list[tuple[list[str], list[str]]] = []
        while True:
            centers = _means(X, labels, len(members))
            if self.refine_iter > 0 and len(members) > 1:
                centers, labels, keep = _refine(X, centers, self.refine_iter)
                members = [m for m, k in zip(members, keep, strict=True) if k]
            if not self.merge or not self._merge_round(X, labels, centers, members, min_size):
                break
            labels = np.unique(labels, return_inverse=True)[1]
        self.labels_, self.cluster_centers_, self.cluster_paths_ = labels, centers, members
        self.n_clusters_ = len(centers)
        accepted = [node for node in self.tree_ if node.accepted]
        self.most_separable_ = max(accepted, key=lambda node: node.bic_gain).path if accepted else None
        return self

    def _merge_round(
        self, X: np.ndarray, labels: np.ndarray, centers: np.ndarray, members: list, min_size: int
    ) -> bool:
        """Merge each cluster with its nearest neighbour when the pair fails the split test.

        Edits labels and members in place (labels may then skip numbers); True if any merged."""
        k = len(centers)
        if k < 2:
            return False
        sq = np.sum(centers * centers, axis=1)
        dist = sq[:, None] + sq[None, :] - 2 * centers @ centers.T
        np.fill_diagonal(dist, np.inf)
        pairs = sorted(
            {(min(i, j), max(i, j)) for i, j in enumerate(np.argmin(dist, axis=1))},
            key=lambda p: (dist[p], p),
        )
        touched: set[int] = set()
        merged: list[int] = []
        for i, j in pairs:
            if i in touched or j in touched:
                continue
            rows = np.flatnonzero((labels == i) | (labels == j))
            lab = (labels[rows] == j).astype(np.int64)
            if self._pair_separate(X[rows], lab, min_size):
                continue
            labels[rows] = i
            self.merges_.append((list(members[i]), list(members[j])))
            members[i] = members[i] + members[j]
            touched.update((i, j))
            merged.append(j)
        for j in sorted(merged, reverse=True):
            del members[j]
        return bool(merged)

    def _pair_separate(self, X: np.ndarray, lab: np.ndarray, min_size: int) -> bool:
        """Whether two clusters (lab 0/1 over their union X) pass the split test as a pair."""
        if np.bincount(lab, minlength=2).min() < min_size:
            return False
        idx = _strided(len(X), self.sample_size)
        if np.bincount(lab[idx], minlength=2).min() < 2:
            return False
        sample_min = max(1, int(np.ceil(min_size * len(idx) / len(X))))
        gain, agree = self._validate(X[idx], lab[idx], sample_min)
        return gain > self.bic_margin and agree >= self.min_agreement

    def predict(self, X) -> np.ndarray:
        """Nearest cluster centre (equals labels_ on the training data when refine_iter > 0)."""
        check_is_fitted(self, "labels_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return _nearest(X, self.cluster_centers_)
