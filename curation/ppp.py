"""PPP: probabilistic partitive partitioning (arXiv 2003.04372), as *we read it*.

Only the paper's abstract could be confirmed: k-means partitions the data, a Gaussian mixture
model validates the partitions, the result does not depend on initial conditions and no number of
clusters is given. Everything below is our reading (see ../shared/METHODS.md), with every
threshold a parameter:

1. Top-down: start with one cluster. A candidate cluster is first reduced to its principal
   components: those that carry `variance_kept` (95%) of its variance, at most `max_components`
   (16) and at most as many as its size supports (`points_per_parameter`). Clustering raw 384-d embeddings needs this: a full-covariance GMM there has 74k
   parameters per component, a diagonal one cannot see correlated directions (a diagonal GMM
   shatters one correlated Gaussian into dozens of "clusters").
2. Candidate splits are deterministic 2-means runs: for each of the `n_directions` (3) leading
   principal directions the cluster is cut at the mean and at the deepest valley of the projected
   density, and Lloyd runs from each cut both in the reduced space and in its whitened version
   (each component scaled to unit variance); the `n_tested` (3) whose halves fit two Gaussians best
   (in closed form) go on to the GMM test. Plain 2-means prefers to cut an elongated cluster
   across its long axis; in the whitened space, or from the cut along a minor direction, the
   split between two parallel elongated clusters is found. Cutting only at the mean slices the
   middle blob of three in a row, a fixed point Lloyd never leaves; the density valley does not.
3. Each candidate is tested with GMMs (full covariance by default) in the reduced space: a
   1-component fit against a 2-component fit initialised from the two halves. A candidate passes
   when BIC prefers two components by more than `bic_margin`, the GMM's labels agree with the
   k-means labels on at least `min_agreement` of the points ("nested" agreement, see
   `agreement()`), the projection on the two halves' discriminant direction is not unimodal
   (Hartigan's dip test, p <= `dip_alpha`), and both halves hold at least `min_cluster_size`
   points (and a `min_cluster_fraction` of all points). Of the passing candidates the one with
   the largest BIC gain is the split. The dip test is what keeps data without cluster structure
   in one piece: a mixture of two Gaussians fits a uniform box, or any skewed or flat-topped
   cloud, better than one Gaussian, so BIC alone keeps splitting such data (a full-GMM BIC
   sweep on uniform data picks many components); a unimodal projection says the two halves are
   no two clusters.
4. Accepted halves are split again; rejected clusters are final. The number of clusters falls out.
   The "most separable set" is the accepted split with the largest BIC gain (`most_separable_`).
5. Large clusters: the reduced space, the candidates and the GMMs use a deterministic (strided)
   sample of at most `sample_size` points; the chosen split's centres are then refined on all of
   the cluster's points (exact Lloyd, MiniBatchKMeans above `minibatch_threshold` points) and
   every point is assigned by the resulting hyperplane.
6. (ours) A hard cut high in the tree leaves tail points of a cluster on the wrong side, for
   good; on large data they are many, they form small clusters of their own and make BIC split
   the cluster they landed in. So after the descent: Lloyd over all leaves at once, started from
   their means, moves them back, with distances measured in the pooled within-cluster metric
   (`within_metric`; Euclidean distance would cut elongated clusters across); then each cluster is merged with its nearest neighbour when the
   pair fails the split test (BIC, agreement, dip test, sizes), and the two steps repeat until
   nothing merges. On well separated data nothing merges and the tree's count stands.

The labels are k-means labels (the GMM only validates). Clusters are numbered in the order of
their path in the tree (left before right), so the numbering is deterministic too.
"""

from __future__ import annotations

from dataclasses import dataclass

import diptest
import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import MiniBatchKMeans
from sklearn.covariance import ledoit_wolf
from sklearn.mixture import GaussianMixture
from sklearn.utils.validation import check_is_fitted, validate_data


@dataclass
class Node:
    """One candidate cluster in the bisection tree."""

    path: str  # "" is the root; "0"/"1" appended per split (left/right)
    size: int
    accepted: bool = False
    reason: str = ""  # why a split was rejected ("" when accepted)
    bic_gain: float = float("nan")  # BIC(1 component) - BIC(2 components) of the chosen candidate
    agreement: float = float("nan")  # share of points where GMM and k-means labels agree
    dip_pvalue: float = float("nan")  # dip test of the projection on the halves' discriminant
    n_components: int = 0  # principal components of the reduced space
    candidate: str = ""  # the chosen start, e.g. "pc1 valley, whitened"


@dataclass
class ReducedSpace:
    """A cluster's leading principal components: coordinates `(X - mean) @ components`, and the
    components' standard deviations (`scales`) for the whitened version."""

    mean: np.ndarray
    components: np.ndarray  # (n_features, k)
    scales: np.ndarray  # (k,)

    def project(self, X: np.ndarray, whiten: bool = False, chunk: int = 65536) -> np.ndarray:
        out = np.empty((len(X), self.components.shape[1]))
        for start in range(0, len(X), chunk):
            out[start : start + chunk] = (X[start : start + chunk] - self.mean) @ self.components
        return out / self.scales if whiten else out


def components_supported(n: int, points_per_parameter: float) -> int:
    """The most dimensions k in which n points give a full-covariance Gaussian (k + k(k+1)/2
    parameters) at least `points_per_parameter` points per parameter (at least 1)."""
    budget = n / points_per_parameter
    k = int((np.sqrt(9 + 8 * budget) - 3) / 2)  # the largest k with k(k+3)/2 <= budget
    return max(1, k)


def reduced_space(
    S: np.ndarray, variance_kept: float, max_components: int, points_per_parameter: float = 0.0
) -> ReducedSpace | None:
    """The principal components of S that carry `variance_kept` of its variance, at most
    `max_components`, at most what len(S) points support (`components_supported`, when
    `points_per_parameter` > 0) and fewer than len(S); None when S has no spread."""
    mean = S.mean(axis=0, dtype=np.float64)
    C = S - mean
    # eigenvectors of the covariance (d x d): cheaper than an SVD of S for tall data
    evals, evecs = np.linalg.eigh(C.T @ C / len(S))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    positive = evals > 1e-12 * max(float(evals[0]), 1e-300)
    if not positive.any() or evals[0] <= 0:
        return None
    evals, evecs = evals[positive], evecs[:, positive]
    share = np.cumsum(evals) / evals.sum()
    k = int(np.searchsorted(share, variance_kept - 1e-12) + 1)
    k = min(k, int(max_components), len(S) - 1, len(evals))
    if points_per_parameter > 0:
        k = min(k, components_supported(len(S), points_per_parameter))
    k = max(1, k)
    evecs = evecs[:, :k]
    # fix each component's sign: results must not depend on the eigen-solver's choice
    evecs = evecs * np.sign(evecs[np.argmax(np.abs(evecs), axis=0), np.arange(k)])
    return ReducedSpace(mean, evecs, np.sqrt(evals[:k]))


def _test_space(Z: np.ndarray, lab: np.ndarray, k: int) -> np.ndarray:
    """Z in k dimensions: the direction between the halves' means, then the leading coordinates of Z
    (principal components) with that direction projected out."""
    direction = Z[lab == 1].mean(axis=0) - Z[lab == 0].mean(axis=0)
    basis = np.eye(Z.shape[1])[:, : max(k - 1, 0)]
    basis, _ = np.linalg.qr(np.column_stack([direction, basis]))
    return Z @ basis[:, :k]


def hard_split_gain(Zw: np.ndarray, lab: np.ndarray, reg: float) -> float:
    """Log-likelihood gain of two Gaussians fitted to the two halves (full covariances, each half's own
    MLE, mixing weights the halves' shares) over one Gaussian fitted to all: the classification
    likelihood of the split, in closed form. Ranks candidates before any EM runs."""

    def logdet(part: np.ndarray) -> float:
        cov = np.atleast_2d(np.cov(part, rowvar=False, bias=True)) + reg * np.eye(Zw.shape[1])
        return float(np.linalg.slogdet(cov)[1])

    n = len(Zw)
    gain = 0.5 * n * logdet(Zw)
    for side in (0, 1):
        part = Zw[lab == side]
        gain += len(part) * np.log(len(part) / n) - 0.5 * len(part) * logdet(part)
    return float(gain)


def _dip_pvalue(Zw: np.ndarray, lab: np.ndarray, reg: float) -> float:
    """Hartigan's dip test p-value of the projection on the two halves' discriminant direction."""
    parts = [Zw[lab == j] for j in (0, 1)]
    within = sum(np.atleast_2d(np.cov(p, rowvar=False, bias=True)) * len(p) for p in parts) / len(Zw)
    gap = parts[1].mean(axis=0) - parts[0].mean(axis=0)
    direction = np.linalg.solve(within + reg * np.eye(len(gap)), gap)
    proj = Zw @ direction
    if np.ptp(proj) <= 0:
        return 1.0
    return float(diptest.diptest(proj)[1])


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


def within_metric(X: np.ndarray, labels: np.ndarray, centers: np.ndarray, sample_size: int) -> np.ndarray:
    """T such that `X @ T` has the identity as its pooled within-cluster covariance.

    Nearest-centre assignment in that space is linear discriminant analysis: it keeps two
    parallel elongated clusters apart where Euclidean distance (plain Lloyd) would cut both across
    their long axis. The covariance is Ledoit-Wolf shrunk (computed on a strided sample), so it
    stays invertible when there are fewer points than features."""
    idx = _strided(len(X), sample_size)
    residuals = X[idx] - centers[labels[idx]]
    cov = ledoit_wolf(residuals.astype(np.float64), assume_centered=True)[0]
    cov += 1e-12 * max(float(np.trace(cov)) / len(cov), 1e-300) * np.eye(len(cov))
    lower = np.linalg.cholesky(cov)
    return np.linalg.inv(lower).T.astype(X.dtype)  # x @ inv(L).T = inv(L) x: identity covariance


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


@dataclass
class Candidate:
    """One tested split of a cluster's sample."""

    name: str
    whiten: bool
    centers: np.ndarray  # the two 2-means centres, in the (whitened or not) reduced space
    labels: np.ndarray  # on the sample
    bic_gain: float = float("nan")
    agreement: float = float("nan")
    dip_pvalue: float = float("nan")


class PPP(ClusterMixin, BaseEstimator):
    """Top-down clustering: deterministic 2-means splits validated by 2-component GMMs in each
    cluster's principal subspace.

    Parameters (defaults are ours; the paper's could not be read)
    ----------
    min_cluster_size, min_cluster_fraction : the smallest cluster is the larger of a count (10)
        and a fraction of all points (0.002). A split is rejected when a half would be smaller, and
        a GMM component smaller than that is no cluster (see `agreement`). The fraction matters on
        large data: there a cut high in the tree strands hundreds of tail points of a cluster on
        the wrong side, enough for BIC to see a second component.
    min_agreement : least share of points on which the GMM's and k-means' labels agree (0.9).
    bic_margin : BIC(1 component) - BIC(2 components) must exceed this (0.0).
    dip_alpha : a split needs Hartigan's dip test to reject unimodality of the projection on the
        halves' discriminant direction at this p-value (0.001); None switches the test off
        (then data without clusters, e.g. uniform, is split wherever a mixture fits better).
    covariance_type : GMM covariance, "full" (default), "diag" or "spherical"; the GMMs are fitted
        in the whitened reduced space, where "full" is invariant to any linear change of the
        features.
    variance_kept, max_components : each cluster's reduced space keeps the leading principal
        components that carry this share of its variance (0.95), at most this many (16).
    points_per_parameter : and at most as many as give a full-covariance Gaussian this many points
        per parameter (10): 240 points support 5 dimensions, 2,000 points 18. Without it BIC's
        penalty for a full covariance in 16 dimensions (153 parameters) drowns the split of two
        well separated clusters of 120 points each.
    whiten : candidate 2-means runs in the reduced space and in its whitened version ("both",
        default), or only one of them (False / True).
    max_clusters : stop splitting at this many clusters (64).
    agreement : how GMM and k-means labels are compared (see `agreement()`). "nested" (default):
        the GMM may carve one k-means half further (on a node holding several clusters, one
        cluster against the rest is as plausible a 2-partition as the k-means cut) but must not
        cross the cut both ways, and both its components must be of cluster size (a single
        cluster plus a few stray points is no split). "exact": the plain share of
        points with the same label.
    n_directions : principal directions tried as starting cuts (3).
    n_tested : candidates tested with EM, those whose two halves fit two Gaussians best in closed form
        (`hard_split_gain`) (3 of up to 12).
    valley_bins : histogram bins for the density-valley cut (32).
    kmeans_max_iter, kmeans_tol : Lloyd iterations and relative centre-shift tolerance.
    gmm_max_iter, gmm_tol, reg_covar : passed to scikit-learn's GaussianMixture.
    sample_size : most points the reduced space, the candidates and the GMMs are fitted on (20000).
    minibatch_threshold : clusters larger than this refine their split with MiniBatchKMeans (100000).
    batch_size : MiniBatchKMeans batch size (4096).
    refine_iter : Lloyd iterations over all final clusters at once, started from the leaf means
        (10; 0 keeps the tree's own assignment).
    merge : after refining, merge each cluster with its nearest neighbour while the pair fails the
        split test (True).
    random_state : seeds MiniBatchKMeans' batch order only; data below `minibatch_threshold`
        never touch it.

    Attributes
    ----------
    labels_, n_clusters_, cluster_centers_ (the cluster means), metric_ (the linear map in whose
    image labels_ are the nearest centres: the pooled within-cluster covariance whitened), tree_ (list of
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
        dip_alpha: float | None = 0.001,
        covariance_type: str = "full",
        variance_kept: float = 0.95,
        max_components: int = 16,
        points_per_parameter: float = 10.0,
        whiten: bool | str = "both",
        max_clusters: int = 64,
        agreement: str = "nested",
        n_directions: int = 3,
        n_tested: int = 3,
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
        self.dip_alpha = dip_alpha
        self.covariance_type = covariance_type
        self.variance_kept = variance_kept
        self.max_components = max_components
        self.points_per_parameter = points_per_parameter
        self.whiten = whiten
        self.max_clusters = max_clusters
        self.agreement = agreement
        self.n_directions = n_directions
        self.n_tested = n_tested
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
    def _spaces(self) -> tuple[bool, ...]:
        if self.whiten == "both":
            return (False, True)
        if isinstance(self.whiten, bool | np.bool_):
            return (bool(self.whiten),)
        raise ValueError(f"whiten must be 'both', True or False, got {self.whiten!r}")

    def _candidates(self, Z: np.ndarray, scales: np.ndarray) -> list[Candidate]:
        """Deterministic 2-means runs from cuts along the leading principal directions (distinct
        partitions only)."""
        out: list[Candidate] = []
        seen: set[bytes] = set()
        for j in range(min(self.n_directions, Z.shape[1])):
            proj = Z[:, j]
            cuts = [("mean", float(proj.mean()))]
            valley = _valley(proj, self.valley_bins)
            if valley is not None:
                cuts.append(("valley", valley))
            for cut_name, t in cuts:
                left = proj <= t
                if left.all() or not left.any():
                    continue
                for whiten in self._spaces():
                    W = Z / scales if whiten else Z
                    start = np.stack([W[left].mean(axis=0), W[~left].mean(axis=0)])
                    centers, _ = _lloyd2(W, start, self.kmeans_max_iter, self.kmeans_tol)
                    lab = _hyperplane_labels(W, centers)
                    key = np.packbits(lab ^ lab[0]).tobytes()  # the partition, whatever the side names
                    if key in seen or lab.min() == lab.max():
                        continue
                    seen.add(key)
                    name = f"pc{j} {cut_name}" + (", whitened" if whiten else "")
                    out.append(Candidate(name, whiten, centers, lab))
        return out

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

    def _gmm_space(self, Z: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
        """Where the GMMs are fitted: the whitened reduced space (a full or diagonal covariance is
        indifferent to the components' scales, and reg_covar becomes relative to them), or the
        reduced space itself for spherical covariances, which whitening would make fit any data."""
        if scales is None:
            scales = np.maximum(Z.std(axis=0), 1e-300)
        return Z if self.covariance_type == "spherical" else Z / scales

    def _test(
        self, Zw: np.ndarray, lab: np.ndarray, one_bic: float, min_size: int
    ) -> tuple[float, float, float]:
        """On a sample Zw (see `_gmm_space`): the BIC gain of 2 over 1 components (one_bic: the 1-component
        BIC), the GMM / k-means agreement and the dip test's p-value (min_size: the smallest GMM
        component, in sample points, that counts as a cluster)."""
        sizes = np.bincount(lab, minlength=2)
        two = self._gmm(
            2,
            weights_init=sizes / sizes.sum(),
            means_init=np.stack([Zw[lab == 0].mean(axis=0), Zw[lab == 1].mean(axis=0)]),
            precisions_init=_gmm_precisions(Zw, lab, self.covariance_type, self.reg_covar),
        ).fit(Zw)
        gain = float(one_bic - two.bic(Zw))
        agree = agreement(lab, two.predict(Zw), nested=self.agreement == "nested", min_size=min_size)
        dip = _dip_pvalue(Zw, lab, self.reg_covar) if self.dip_alpha is not None else 0.0
        return gain, agree, dip

    def _failure(self, c: Candidate) -> str:
        """Why a tested candidate is no split ("" when it is one)."""
        if not c.bic_gain > self.bic_margin:
            return "BIC prefers one component"
        if c.agreement < self.min_agreement:
            return f"GMM agrees on {c.agreement:.3f} < {self.min_agreement}"
        if self.dip_alpha is not None and c.dip_pvalue > self.dip_alpha:
            return f"unimodal along the split (dip test p = {c.dip_pvalue:.3g} > {self.dip_alpha})"
        return ""

    def _best_candidate(
        self, Z: np.ndarray, space: ReducedSpace, sample_min: int, k_test: int
    ) -> tuple[Candidate | None, str]:
        """The passing candidate with the largest BIC gain, else the best failing one and its reason.

        Candidates are partitions found in the whole reduced space Z. Each is tested in `k_test`
        dimensions (as many as the points support for full-covariance GMMs): the direction between its
        halves' means, then the leading principal components, so that a split along a direction of
        little variance is still seen by its test."""
        candidates = [
            c
            for c in self._candidates(Z, space.scales)
            if np.bincount(c.labels, minlength=2).min() >= sample_min
        ]
        if not candidates:
            return None, f"a half has fewer than {sample_min} points"
        spaces = [self._gmm_space(_test_space(Z, c.labels, k_test), None) for c in candidates]
        # EM for the few candidates whose halves fit two Gaussians best (the GMM fits are most of the time)
        order = sorted(
            range(len(candidates)),
            key=lambda i: -hard_split_gain(spaces[i], candidates[i].labels, self.reg_covar),
        )
        tested = order[: self.n_tested]
        for i in tested:
            Zw, c = spaces[i], candidates[i]
            one_bic = float(self._gmm(1).fit(Zw).bic(Zw))
            c.bic_gain, c.agreement, c.dip_pvalue = self._test(Zw, c.labels, one_bic, sample_min)
        candidates = [candidates[i] for i in tested]
        passing = [c for c in candidates if not self._failure(c)]
        best = max(passing or candidates, key=lambda c: c.bic_gain)
        return best, self._failure(best)

    def _split(self, X: np.ndarray, node: Node, min_size: int) -> np.ndarray | None:
        """Labels (0/1) of an accepted split of X, or None; records the decision on `node`."""
        if node.size < 2 * min_size:
            node.reason = "too small to split"
            return None
        idx = _strided(len(X), self.sample_size)
        # Partitions are proposed in the cluster's principal subspace and tested in as many dimensions
        # as the points support (see _best_candidate).
        space = reduced_space(X[idx], self.variance_kept, self.max_components)
        if space is None:
            node.reason = "no spread"
            return None
        k_test = space.components.shape[1]
        if self.points_per_parameter > 0:
            k_test = min(k_test, components_supported(len(idx), self.points_per_parameter))
        node.n_components = k_test
        sample_min = max(1, int(np.ceil(min_size * len(idx) / len(X))))  # min_size on the sample's scale
        best, reason = self._best_candidate(space.project(X[idx]), space, sample_min, k_test)
        if best is None:
            node.reason = reason
            return None
        node.bic_gain, node.agreement, node.dip_pvalue = best.bic_gain, best.agreement, best.dip_pvalue
        node.candidate = best.name
        if reason:
            node.reason = reason
            return None
        if len(idx) == len(X):
            lab = best.labels
        else:  # refine the sample's split on every point of the cluster
            W = space.project(X, best.whiten)
            if len(X) > self.minibatch_threshold:
                centers = (
                    MiniBatchKMeans(
                        n_clusters=2,
                        init=best.centers,
                        n_init=1,
                        batch_size=self.batch_size,
                        max_iter=self.kmeans_max_iter,
                        random_state=self.random_state,
                    )
                    .fit(W)
                    .cluster_centers_
                )
            else:
                centers, _ = _lloyd2(W, best.centers, self.kmeans_max_iter, self.kmeans_tol)
            lab = _hyperplane_labels(W, centers)
        sizes = np.bincount(lab, minlength=2)
        if sizes.min() < min_size:
            node.reason = f"a half has {sizes.min()} < {min_size} points"
            return None
        node.accepted = True
        return lab

    # -- the tree ------------------------------------------------------------------------
    def fit(self, X, y=None) -> PPP:
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        self._spaces()  # a bad `whiten` fails before any work
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
            metric = np.eye(X.shape[1], dtype=X.dtype)
            if len(members) > 1:
                metric = within_metric(X, labels, centers, self.sample_size)
                if self.refine_iter > 0:
                    _, labels, keep = _refine(X @ metric, centers @ metric, self.refine_iter)
                    members = [m for m, k in zip(members, keep, strict=True) if k]
                    centers = _means(X, labels, len(members))
            if not self.merge or not self._merge_round(X, labels, centers @ metric, members, min_size):
                break
            labels = np.unique(labels, return_inverse=True)[1]
        self.labels_, self.cluster_centers_, self.cluster_paths_ = labels, centers, members
        self.metric_ = metric
        self.n_clusters_ = len(centers)
        accepted = [node for node in self.tree_ if node.accepted]
        self.most_separable_ = max(accepted, key=lambda node: node.bic_gain).path if accepted else None
        return self

    def _merge_round(
        self, X: np.ndarray, labels: np.ndarray, centers: np.ndarray, members: list, min_size: int
    ) -> bool:
        """Merge each cluster with its nearest neighbour (by `centers`, in the metric space) when the
        pair fails the split test.

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
        space = reduced_space(X[idx], self.variance_kept, self.max_components, self.points_per_parameter)
        if space is None:
            return False
        sample_min = max(1, int(np.ceil(min_size * len(idx) / len(X))))
        Zw = self._gmm_space(space.project(X[idx]), space.scales)
        one_bic = float(self._gmm(1).fit(Zw).bic(Zw))
        pair = Candidate("pair", True, np.zeros((2, Zw.shape[1])), lab[idx])
        pair.bic_gain, pair.agreement, pair.dip_pvalue = self._test(Zw, lab[idx], one_bic, sample_min)
        return not self._failure(pair)

    def predict(self, X) -> np.ndarray:
        """Nearest cluster centre in the pooled within-cluster metric (`metric_`, see `within_metric`);
        equals labels_ on the training data when refine_iter > 0."""
        check_is_fitted(self, "labels_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        metric = self.metric_.astype(X.dtype)
        return _nearest(X @ metric, self.cluster_centers_ @ metric)
