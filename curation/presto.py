"""PRESTO: rare-event probabilities by shrinking towards proportional odds (arXiv 2305.18700).

Model, for ordered classes 1 < ... < K (the rare event is class K):

    P(y <= k | x) = sigmoid(alpha_k + beta_k^T x),   k = 1..K-1,

with its own weight vector per threshold. Objective (features standardised; coefficients are
mapped back to the original scale afterwards):

    mean NLL + lambda * (||beta_1||_1 + sum_{k>=2} ||beta_k - beta_{k-1}||_1),  intercepts unpenalised.

As in the authors' code we reparametrise psi_1 = beta_1, psi_k = beta_k - beta_{k-1}, which makes
the penalty a plain lasso on psi, and solve it by proximal Newton: the exact Hessian of the NLL
(IRLS), a coordinate-descent lasso on the quadratic model, and a backtracking line search that
also keeps the iterate inside the NLL's domain (P(y = k | x) > 0 on every training row).

lambda: 20 log-spaced values from lambda_max (the smallest lambda with every psi zero) down to
0.01 lambda_max, computed on all data; 5-fold CV on the (multi-class) Brier score, each fold
standardised on its own training part; the largest lambda whose mean CV score equals the minimum;
a refit on all data. The folds are stratified by class (ours: the authors' ordinalNet draws plain
random folds, which can leave a rare class out of a training fold).

Predicted probabilities use monotone cumulative probabilities (a running maximum over k, since
separate slopes can cross away from the training data) and are floored at 1e-8, then renormalised
to sum to one (as the authors' ordinalNet does with its pMin).

Sign convention: `intercept_[k] + X @ coef_[k]` is the log-odds of y <= classes_[k]
(`cumulative_log_odds`), so a positive coefficient makes the high classes *less* likely.
(statsmodels' OrderedModel uses `cut_k - x beta`, the opposite sign.) `decision_function` follows
scikit-learn's convention instead: the log-odds of the last class for two classes, else the log
of each class's probability.

A constant fit (every slope zero at the chosen lambda: cross-validation found no feature worth its
penalty, typical for few examples) predicts the class shares for every input. It is no error, but
a user asking for per-example probabilities must know: `fit` warns (UserWarning) and sets
`constant_ = True`.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit, log_expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def _eta(theta: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Linear predictors (n, K-1) from theta = [alpha | psi] of shape (K-1, p+1)."""
    beta = np.cumsum(theta[:, 1:], axis=0)
    return theta[:, 0][None, :] + Z @ beta.T


def _nll(eta: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood; +inf outside the domain (a middle class with P <= 0)."""
    n, km1 = eta.shape
    rows = np.arange(n)
    total = 0.0
    first, last = y == 0, y == km1
    total -= log_expit(eta[first, 0]).sum()
    total -= log_expit(-eta[last, km1 - 1]).sum()
    mid = ~(first | last)
    if mid.any():
        c = y[mid]
        a, b = eta[rows[mid], c], eta[rows[mid], c - 1]
        t = a - b
        if np.any(t <= 0):
            return np.inf
        # log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - e^{-(a-b)})
        total -= (log_expit(a) + log_expit(-b) + np.log(-np.expm1(-t))).sum()
    return total / n


def _derivatives(eta: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row first derivatives (n, K-1), diagonal (n, K-1) and off-diagonal (n, K-2) second
    derivatives of the NLL with respect to eta (a row touches at most eta_{c-1} and eta_c)."""
    n, km1 = eta.shape
    rows = np.arange(n)
    g = np.zeros_like(eta)
    h = np.zeros_like(eta)
    off = np.zeros((n, max(km1 - 1, 0)))
    first, last = y == 0, y == km1
    s = expit(eta[first, 0])
    g[first, 0] = s - 1.0
    h[first, 0] = s * (1.0 - s)
    s = expit(eta[last, km1 - 1])
    g[last, km1 - 1] = s
    h[last, km1 - 1] = s * (1.0 - s)
    mid = ~(first | last)
    if mid.any():
        r, c = rows[mid], y[mid]
        a, b = eta[r, c], eta[r, c - 1]
        et = np.exp(-(a - b))
        one_minus = -np.expm1(-(a - b))
        q = et / one_minus  # 1 / expm1(a - b)
        m = et / one_minus**2  # e^t / expm1(t)^2, stable for t > 0
        sa, sb = expit(a), expit(b)
        g[r, c] = -(1.0 - sa) - q
        g[r, c - 1] = sb + q
        h[r, c] = sa * (1.0 - sa) + m
        h[r, c - 1] = sb * (1.0 - sb) + m
        off[r, c - 1] = -m
    return g, h, off


def _transform(km1: int, p1: int) -> np.ndarray:
    """M with theta_beta = M theta_psi (flattened (K-1, p+1) row-major)."""
    e_alpha = np.zeros(p1)
    e_alpha[0] = 1.0
    return np.kron(np.tril(np.ones((km1, km1))), np.diag(1.0 - e_alpha)) + np.kron(
        np.eye(km1), np.diag(e_alpha)
    )


def _grad_hess(
    theta: np.ndarray, Z1: np.ndarray, y: np.ndarray, M: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian of the mean NLL in the flattened psi parametrisation."""
    n = Z1.shape[0]
    km1, p1 = theta.shape
    g, h, off = _derivatives(_eta(theta, Z1[:, 1:]), y)
    grad_beta = (Z1.T @ g).T.ravel() / n
    H = np.zeros((km1 * p1, km1 * p1))
    for k in range(km1):
        sl = slice(k * p1, (k + 1) * p1)
        H[sl, sl] = (Z1.T * h[:, k]) @ Z1 / n
        if k + 1 < km1:
            sl2 = slice((k + 1) * p1, (k + 2) * p1)
            block = (Z1.T * off[:, k]) @ Z1 / n
            H[sl, sl2] = block
            H[sl2, sl] = block.T
    return M.T @ grad_beta, M.T @ H @ M


def _soft(u: float, t: float) -> float:
    return np.sign(u) * max(abs(u) - t, 0.0)


def _cd_lasso(H: np.ndarray, c: np.ndarray, pen: np.ndarray, z: np.ndarray, tol: float, max_sweeps: int):
    """Minimise 0.5 z'Hz + c'z + sum pen_j |z_j| by cyclic coordinate descent with an active set."""
    z = z.copy()
    r = H @ z + c
    diag = np.maximum(np.diag(H), 1e-12)
    d = len(z)
    full = np.arange(d)
    active = full
    for _ in range(max_sweeps):
        biggest = 0.0
        for j in active:
            zj = z[j]
            new = _soft(diag[j] * zj - r[j], pen[j]) / diag[j]
            if new != zj:
                delta = new - zj
                r += H[:, j] * delta
                z[j] = new
                biggest = max(biggest, abs(delta) * np.sqrt(diag[j]))
        if biggest < tol:
            if active is full:
                break
            active = full  # the active set converged: one full sweep to confirm
        else:
            active = np.flatnonzero((z != 0) | (pen == 0)) if active is full else active
    return z


def _objective(theta: np.ndarray, Z: np.ndarray, y: np.ndarray, lam: float) -> float:
    return _nll(_eta(theta, Z), y) + lam * np.abs(theta[:, 1:]).sum()


def fit_penalized(
    Z: np.ndarray,
    y: np.ndarray,
    lam: float,
    theta0: np.ndarray,
    tol: float = 1e-10,
    max_iter: int = 200,
    iterations: list[int] | None = None,
) -> np.ndarray:
    """Proximal Newton for the reparametrised problem on already standardised features Z.

    y holds class indices 0..K-1; theta0 (K-1, p+1) must be feasible (e.g. the null model).
    The number of Newton steps taken is appended to `iterations` when given."""
    n, p = Z.shape
    km1 = theta0.shape[0]
    Z1 = np.hstack([np.ones((n, 1)), Z])
    M = _transform(km1, p + 1)
    pen = np.tile(np.r_[0.0, np.ones(p)], km1) * lam
    theta = theta0.copy()
    f = _objective(theta, Z, y, lam)
    if not np.isfinite(f):
        raise ValueError("PRESTO: the starting point is outside the likelihood's domain")
    steps = 0
    for steps in range(1, max_iter + 1):
        grad, H = _grad_hess(theta, Z1, y, M)
        x = theta.ravel()
        # the quadratic model in z = theta + step: 0.5 z'Hz + (grad - H x)'z + pen|z|
        z = _cd_lasso(H, grad - H @ x, pen, x, tol=tol * 1e-2, max_sweeps=10_000)
        step = z - x
        if np.max(np.abs(step)) < tol:
            break
        decrease = grad @ step + (np.abs(pen * z).sum() - np.abs(pen * x).sum())
        t = 1.0
        for _ in range(60):
            cand = (x + t * step).reshape(theta.shape)
            fc = _objective(cand, Z, y, lam)
            if fc <= f + 0.25 * t * decrease:
                break
            t *= 0.5
        else:
            break  # no progress possible at machine precision
        moved = t * np.max(np.abs(step))
        theta, f_old, f = cand, f, fc
        if moved < tol or f_old - f < tol * 1e-3 * max(1.0, abs(f)):
            break
    if iterations is not None:
        iterations.append(steps)
    return theta


def null_model(y: np.ndarray, K: int, p: int) -> np.ndarray:
    """Intercept-only MLE: alpha_k = logit(P(y <= k)), every psi zero."""
    cum = np.cumsum(np.bincount(y, minlength=K))[:-1] / len(y)
    theta = np.zeros((K - 1, p + 1))
    theta[:, 0] = np.log(cum) - np.log1p(-cum)
    return theta


def lambda_max(Z: np.ndarray, y: np.ndarray, K: int) -> float:
    """The smallest lambda at which every psi is zero: the largest |gradient| in psi at the null model."""
    theta = null_model(y, K, Z.shape[1])
    g, _, _ = _derivatives(_eta(theta, Z), y)
    grad_beta = (Z.T @ g).T / len(y)  # (K-1, p)
    grad_psi = np.cumsum(grad_beta[::-1], axis=0)[::-1]  # psi_j enters beta_k for every k >= j
    return float(np.max(np.abs(grad_psi)))


def cumulative_to_proba(eta: np.ndarray, floor: float) -> np.ndarray:
    """Class probabilities from cumulative log-odds: monotone cumulative, floored, renormalised."""
    F = np.maximum.accumulate(expit(eta), axis=1)
    n = F.shape[0]
    P = np.diff(np.hstack([np.zeros((n, 1)), F, np.ones((n, 1))]), axis=1)
    P = np.maximum(P, floor)
    return P / P.sum(axis=1, keepdims=True)


def brier(P: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of sum_k (p_k - 1[y = k])^2."""
    onehot = np.zeros_like(P)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((P - onehot) ** 2, axis=1)))


class Presto(ClassifierMixin, BaseEstimator):
    """PRESTO ordinal model for rare-event probabilities; the rare event is the last class.

    Parameters
    ----------
    lam : fixed penalty. None (default) selects it by cross-validation over the lambda path.
    n_lambdas : length of the path (paper: 20).
    lambda_min_ratio : smallest lambda as a fraction of lambda_max (paper: 0.01).
    cv : number of stratified folds (paper: 5).
    cv_metric : "brier" (all classes, default) or "brier_rare" (squared error of P(y = K | x) only).
        The paper says "Brier score"; which of the two its code averages is unconfirmed.
    prob_floor : floor for predicted class probabilities (authors' code: 1e-8).
    tol, max_iter : proximal Newton stopping rule (largest coordinate step) and iteration cap.
    random_state : seed of the fold shuffling.

    Attributes
    ----------
    classes_ : the ordered classes (sorted labels).
    coef_ : (K-1, n_features) beta_k on the original feature scale.
    intercept_ : (K-1,) alpha_k on the original feature scale.
    lambda_ : the penalty used for the final fit; lambdas_ and cv_scores_ hold the path and its
        mean CV score (absent when `lam` is given).
    constant_ : True when every slope is zero at lambda_ (the fit predicts the class shares for
        every input; `fit` warns).
    n_iter_ : proximal Newton steps of the final fit (summed over its warm-started path).
    """

    def __init__(
        self,
        lam: float | None = None,
        n_lambdas: int = 20,
        lambda_min_ratio: float = 0.01,
        cv: int = 5,
        cv_metric: str = "brier",
        prob_floor: float = 1e-8,
        tol: float = 1e-10,
        max_iter: int = 200,
        random_state: int | None = 0,
    ) -> None:
        self.lam = lam
        self.n_lambdas = n_lambdas
        self.lambda_min_ratio = lambda_min_ratio
        self.cv = cv
        self.cv_metric = cv_metric
        self.prob_floor = prob_floor
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    # -- fitting -------------------------------------------------------------------------
    def _fit_path(
        self, X: np.ndarray, y: np.ndarray, K: int, lambdas: np.ndarray, iterations: list[int] | None = None
    ) -> list[tuple]:
        """Fit each lambda in order (warm starts); returns (intercept, coef) on X's scale per lambda."""
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale == 0] = 1.0
        Z = (X - mean) / scale
        theta = null_model(y, K, X.shape[1])
        out = []
        for lam in lambdas:
            theta = fit_penalized(
                Z, y, float(lam), theta, tol=self.tol, max_iter=self.max_iter, iterations=iterations
            )
            coef = np.cumsum(theta[:, 1:], axis=0) / scale
            out.append((theta[:, 0] - coef @ mean, coef))
        return out

    def _score(self, P: np.ndarray, y: np.ndarray) -> float:
        if self.cv_metric == "brier":
            return brier(P, y)
        if self.cv_metric == "brier_rare":
            return float(np.mean((P[:, -1] - (y == P.shape[1] - 1)) ** 2))
        raise ValueError(f"cv_metric must be 'brier' or 'brier_rare', got {self.cv_metric!r}")

    def fit(self, X, y) -> Presto:
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        K = len(self.classes_)
        if K < 2:
            raise ValueError(f"PRESTO needs at least two ordered classes, got {K} class")
        iterations: list[int] = []
        if self.lam is not None:
            self.lambda_ = float(self.lam)
            path = self._fit_path(X, yi, K, np.array([self.lambda_]), iterations)
        else:
            path = self._fit_with_cv(X, yi, K, iterations)
        self.intercept_, self.coef_ = path[-1]
        self.n_iter_ = int(sum(iterations))
        self.constant_ = bool(np.all(self.coef_ == 0))
        if self.constant_:
            warnings.warn(
                f"PRESTO: the fit is constant (every slope is zero at lambda {self.lambda_:.3g}): "
                f"it predicts the class shares for every input; {len(y)} examples may be too few "
                "for any feature to pay its penalty",
                UserWarning,
                stacklevel=2,
            )
        return self

    def _fit_with_cv(self, X: np.ndarray, yi: np.ndarray, K: int, iterations: list[int]) -> list[tuple]:
        """Choose lambda by stratified CV over the path (see the module docstring); the refit's path."""
        counts = np.bincount(yi, minlength=K)
        if counts.min() < 2:
            raise ValueError(
                f"PRESTO: class {self.classes_[counts.argmin()]} has {counts.min()} example; "
                "cross-validation needs at least 2 per class"
            )
        # fewer members than folds: StratifiedKFold warns and puts one member in some test folds;
        # every training part still holds each class
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale[scale == 0] = 1.0
        lmax = lambda_max((X - mean) / scale, yi, K)
        if lmax <= 0:
            lmax = 1.0  # the features carry no signal at all; any path gives the null model
        self.lambdas_ = np.geomspace(lmax, lmax * self.lambda_min_ratio, self.n_lambdas)
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        scores = np.zeros((self.cv, self.n_lambdas))
        for f, (tr, te) in enumerate(folds.split(X, yi)):
            for i, (b0, B) in enumerate(self._fit_path(X[tr], yi[tr], K, self.lambdas_)):
                scores[f, i] = self._score(cumulative_to_proba(b0 + X[te] @ B.T, self.prob_floor), yi[te])
        self.cv_scores_ = scores.mean(axis=0)
        best = self.cv_scores_.min()
        # the largest lambda (path is decreasing: the first index) whose score equals the minimum
        self.best_index_ = int(np.flatnonzero(self.cv_scores_ <= best + 1e-12 * max(1.0, abs(best)))[0])
        self.lambda_ = float(self.lambdas_[self.best_index_])
        return self._fit_path(X, yi, K, self.lambdas_[: self.best_index_ + 1], iterations)

    # -- prediction ----------------------------------------------------------------------
    def cumulative_log_odds(self, X) -> np.ndarray:
        """Cumulative log-odds (n, K-1) of y <= classes_[k]: the model's linear predictors."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.intercept_[None, :] + X @ self.coef_.T

    def decision_function(self, X) -> np.ndarray:
        """scikit-learn's convention: for two classes the log-odds of classes_[1] (n,); else the log
        of each class's probability (n, K), whose argmax is `predict`."""
        check_is_fitted(self, "coef_")
        if len(self.classes_) == 2:
            return -self.cumulative_log_odds(X)[:, 0]
        return np.log(self.predict_proba(X))

    def predict_proba(self, X) -> np.ndarray:
        return cumulative_to_proba(self.cumulative_log_odds(X), self.prob_floor)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "coef_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def predict_rare_proba(self, X) -> np.ndarray:
        """P(y = classes_[-1] | x), the rare event's probability."""
        return self.predict_proba(X)[:, -1]
