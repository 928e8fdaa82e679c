"""The simulated users: an oracle fitted on the complete real log, of another family than the
systems (implicit ALS matrix factorisation), that accepts or ignores what it is recommended.

    p(u accepts i) = sigmoid(a * z(u, i) + b) * fatigue(u, cluster(i))
    z = (x_u . y_i - mean) / std            oracle score, standardised over all pairs
    fatigue = exp(-gamma * share of the user's last `window` periods spent in that cluster)

Calibration. The slope a comes from a logistic regression of "held-out real interaction" (10%
of the real (user, item) pairs, hidden from a first ALS fit) against random unseen pairs, so
real interactions score high. The intercept b is then set (bisection) so that the mean
acceptance of a reference list (DSIE's top 10 at the start of the simulation, see
`coea simulate`) equals a target share (by default DSIE's real precision@10 on the test
period): a plausible share of a good list is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coea_cli.workspace import History


@dataclass
class Oracle:
    user_factors: np.ndarray  # [U, f]
    item_factors: np.ndarray  # [N, f]
    mean: float
    std: float
    slope: float
    intercept: float
    fatigue: float  # gamma; 0 turns fatigue off
    window: int  # periods of consumption that fatigue looks at

    def z(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Standardised scores of items [U, K] for users [U]."""
        s = np.einsum("uf,ukf->uk", self.user_factors[users], self.item_factors[items])
        return (s - self.mean) / self.std

    def accept_prob(
        self, users: np.ndarray, items: np.ndarray, tired: np.ndarray | None = None
    ) -> np.ndarray:
        """[U, K] acceptance probabilities; `tired` [U, K] is the share of each user's recent
        consumption spent in each item's cluster (None: no fatigue). Padding (-1) gets 0."""
        valid = items >= 0
        p = _sigmoid(self.slope * self.z(users, np.maximum(items, 0)) + self.intercept)
        if tired is not None and self.fatigue > 0:
            p = p * np.exp(-self.fatigue * tired)
        return np.where(valid, p, 0.0)

    def tensors(self) -> dict:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def meta(self) -> dict:
        keys = ("mean", "std", "slope", "intercept", "fatigue", "window")
        return {k: float(getattr(self, k)) for k in keys}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, alpha: float):
    """Confidence matrix 1 + alpha * count, CSR [U, N]."""
    import scipy.sparse as sp

    counts = sp.csr_matrix(
        (np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items)
    )
    counts.sum_duplicates()
    counts.data = (alpha * counts.data).astype(np.float32)
    return counts


def _als(matrix, factors: int, iterations: int, regularization: float, seed: int):
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=factors, iterations=iterations, regularization=regularization, random_state=seed
        )
        model.fit(matrix, show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def fit_oracle(
    history: History,
    *,
    factors: int = 32,
    iterations: int = 15,
    regularization: float = 0.05,
    alpha: float = 10.0,
    fatigue: float = 1.0,
    window: int = 2,
    seed: int = 0,
) -> Oracle:
    """ALS on every real interaction (all periods); the slope calibrated on held-out pairs."""
    rng = np.random.default_rng(seed)
    n_u, n_i = history.n_users, history.n_items
    pairs = np.unique(np.stack([history.users, history.items], axis=1), axis=0)
    held = rng.random(len(pairs)) < 0.1
    uf, vf = _als(
        _matrix(pairs[~held, 0], pairs[~held, 1], n_u, n_i, alpha), factors, iterations,
        regularization, seed,
    )  # fmt: skip
    known = set(map(tuple, pairs.tolist()))
    neg_u = rng.integers(0, n_u, 4 * held.sum())
    neg_i = rng.integers(0, n_i, 4 * held.sum())
    keep = np.array([(u, i) not in known for u, i in zip(neg_u, neg_i, strict=True)])
    pos_s = np.einsum("uf,uf->u", uf[pairs[held, 0]], vf[pairs[held, 1]])
    neg_s = np.einsum("uf,uf->u", uf[neg_u[keep]], vf[neg_i[keep]])
    mean, std = _moments(uf, vf, rng)
    slope = _logistic_slope(np.r_[pos_s, neg_s], np.r_[np.ones(len(pos_s)), np.zeros(len(neg_s))],
                            mean, std)  # fmt: skip
    uf, vf = _als(_matrix(pairs[:, 0], pairs[:, 1], n_u, n_i, alpha), factors, iterations,
                  regularization, seed)  # fmt: skip
    mean, std = _moments(uf, vf, rng)
    return Oracle(uf, vf, mean, std, slope, 0.0, fatigue, window)


def _moments(uf, vf, rng, n: int = 200_000) -> tuple[float, float]:
    u = rng.integers(0, len(uf), n)
    i = rng.integers(0, len(vf), n)
    s = np.einsum("uf,uf->u", uf[u], vf[i])
    return float(s.mean()), float(s.std() + 1e-12)


def _logistic_slope(scores: np.ndarray, labels: np.ndarray, mean: float, std: float) -> float:
    from sklearn.linear_model import LogisticRegression

    z = ((scores - mean) / std)[:, None]
    return float(LogisticRegression(C=1e4).fit(z, labels).coef_[0, 0])


def calibrate(oracle: Oracle, users: np.ndarray, lists: np.ndarray, target: float) -> Oracle:
    """Set the intercept so that the mean acceptance of `lists` [U, K] is `target`."""
    if not 0 < target < 1:
        raise ValueError(f"the target acceptance must be in (0, 1), got {target}")
    valid = lists >= 0
    z = oracle.z(users, np.maximum(lists, 0))[valid]
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if _sigmoid(oracle.slope * z + mid).mean() < target:
            lo = mid
        else:
            hi = mid
    oracle.intercept = (lo + hi) / 2
    return oracle


def recent_shares(
    history: History, users: np.ndarray, item_cluster: np.ndarray, n_clusters: int, period: int,
    window: int,
) -> np.ndarray:  # fmt: skip
    """[U, C] share of each user's interactions in periods [period - window, period) spent in
    each cluster (zero rows for users with none)."""
    mask = (history.periods < period) & (history.periods >= period - window)
    row = {int(u): r for r, u in enumerate(users)}
    sel = mask & np.isin(history.users, users)
    out = np.zeros((len(users), n_clusters))
    rows = np.array([row[int(u)] for u in history.users[sel]], dtype=np.int64)
    np.add.at(out, (rows, item_cluster[history.items[sel]]), 1.0)
    total = out.sum(axis=1, keepdims=True)
    return np.divide(out, total, out=np.zeros_like(out), where=total > 0)
