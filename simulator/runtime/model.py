"""Regressors for measured kernel times, following scikit-learn's estimator contract.

Every estimator here stores only its parameters in __init__, learns in fit(X, y), answers in
predict(X) and validates its inputs, so the fitting code can compare families behind one interface.
X is a physics feature matrix (columns from simulator.runtime.features, all >= 0); y is milliseconds.

Families:
  RooflineLinearRegressor   time = non-negative combination of work terms (FLOPs, bytes, counts):
                            extrapolates like the hardware does, but cannot bend.
  ResidualBoostedRegressor  roofline-linear times exp(boosted oblivious trees on log features): keeps
                            the physics trend outside the data, learns the kernel's quirks inside it.
  ResidualInterpolatedRegressor  roofline-linear times a log-log interpolated correction over one
                            column (token-wise ops: a function of the token count alone), optionally
                            through a running median of the measured corrections (spikes left out).
  TreeRegressor             scikit-learn random forest or gradient boosting on log features, log time:
                            the usual black-box baselines; flat outside the data.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y


def _check_fit_inputs(X, y):
    X, y = check_X_y(X, y, dtype=np.float64, y_numeric=True)
    if (y <= 0).any():
        raise ValueError("y (times in ms) must be positive")
    if (X < 0).any():
        raise ValueError("X (physics features) must be non-negative")
    return X, y


class RooflineLinearRegressor(RegressorMixin, BaseEstimator):
    """time = intercept + sum_j coef_j * X_j with every coefficient >= 0, fitted on relative error.

    Non-negativity keeps each term a cost (seconds per FLOP, per byte, per launch), so predictions grow
    with work and extrapolate along the roofline. `columns` selects features (None = all).
    """

    def __init__(self, columns=None, fit_intercept: bool = True):
        self.columns = columns
        self.fit_intercept = fit_intercept

    def _design(self, X):
        cols = X if self.columns is None else X[:, list(self.columns)]
        if self.fit_intercept:
            cols = np.column_stack([np.ones(len(cols)), cols])
        return cols

    def fit(self, X, y):
        X, y = _check_fit_inputs(X, y)
        self.n_features_in_ = X.shape[1]
        design = self._design(X)
        # Scale columns to unit size so NNLS is well conditioned; divide rows by y for relative error.
        scale = np.maximum(np.abs(design).max(axis=0), 1e-300)
        coef_scaled, _ = nnls(design / scale / y[:, None], np.ones_like(y), maxiter=50 * design.shape[1])
        coef = coef_scaled / scale
        self.intercept_ = float(coef[0]) if self.fit_intercept else 0.0
        self.coef_ = coef[1:] if self.fit_intercept else coef
        return self

    def predict(self, X):
        check_is_fitted(self, "coef_")
        X = check_array(X, dtype=np.float64)
        cols = X if self.columns is None else X[:, list(self.columns)]
        # Guard against an all-zero fit on a degenerate feature: never predict a zero time.
        return np.maximum(cols @ self.coef_ + self.intercept_, 1e-9)

    def full_coef(self) -> np.ndarray:
        """Coefficients over all X columns (zeros for unselected), for fast dot products."""
        check_is_fitted(self, "coef_")
        full = np.zeros(self.n_features_in_)
        full[np.arange(self.n_features_in_) if self.columns is None else list(self.columns)] = self.coef_
        return full


class RooflineMaxRegressor(RegressorMixin, BaseEstimator):
    """time = a . x + max_g(b_g . x), every coefficient >= 0, fitted on relative error.

    A roofline: fixed costs (a, on `additive_columns`) plus the slowest of several limits, one per
    entry of `branches` (each a list of columns): e.g. compute (FLOPs through the tensor cores),
    memory (bytes through HBM) and the critical path (the longest single thread block of a launch
    that does not fill the GPU). Columns not named in a group have a zero coefficient there.
    """

    def __init__(self, additive_columns=(), branches=((),)):
        self.additive_columns = additive_columns
        self.branches = branches

    def _masks(self, f: int) -> np.ndarray:
        groups = [self.additive_columns, *self.branches]
        masks = np.zeros((len(groups), f), dtype=bool)
        for g, cols in enumerate(groups):
            masks[g, list(cols)] = True
        return masks

    def fit(self, X, y):
        from scipy.optimize import least_squares

        X, y = _check_fit_inputs(X, y)
        f = X.shape[1]
        self.n_features_in_ = f
        masks = self._masks(f)
        if len(masks) < 2 or not masks[1:].any():
            raise ValueError("branches must name at least one column")
        # Columns that are zero in every training row cannot be learned: they keep a zero coefficient.
        scale = np.where(X.max(axis=0) > 0, X.max(axis=0), 1.0)
        masks &= (X > 0).any(axis=0)
        Xs = X / scale
        if not masks[1:].any():
            raise ValueError("every branch column is zero in the training rows")

        def coefficients(theta_free):
            coef = np.zeros(masks.shape)
            coef[masks] = theta_free
            return coef

        def residual(theta_free):
            coef = coefficients(theta_free)
            return (Xs @ coef[0] + (Xs @ coef[1:].T).max(axis=1)) / y - 1.0

        # Two starts; the max() makes the loss flat where a branch is never the slowest, so the start
        # decides which branches get to matter. (1) every branch term as a lower bound: time >= c x, c a
        # low quantile of time / x; fixed costs at a share of the fastest launch. (2) an additive fit.
        bound = np.zeros(masks.shape)
        for g in range(1, len(masks)):
            for j in np.flatnonzero(masks[g]):
                nonzero = Xs[:, j] > 0
                if nonzero.any():
                    bound[g, j] = np.quantile(y[nonzero] / Xs[nonzero, j], 0.05) / masks[g].sum()
        if masks[0].any():
            bound[0, masks[0]] = 0.5 * y.min() / np.maximum(Xs[:, masks[0]].max(axis=0), 1e-12) / masks[0].sum()
        additive = RooflineLinearRegressor(columns=list(np.flatnonzero(masks.any(axis=0))), fit_intercept=False)
        additive_coef = additive.fit(X, y).full_coef() * scale
        additive_coef = np.where(additive_coef > 0, additive_coef, 0.05 * np.median(y))
        solution = None
        for start in (bound[masks], (masks * additive_coef)[masks]):
            candidate = least_squares(residual, np.maximum(start, 1e-12), bounds=(0.0, np.inf), method="trf",
                                      x_scale="jac", max_nfev=300)
            if solution is None or candidate.cost < solution.cost:
                solution = candidate
        self.coef_ = coefficients(solution.x) / scale  # rows: additive, then one per branch
        return self

    def predict(self, X):
        check_is_fitted(self, "coef_")
        X = check_array(X, dtype=np.float64)
        return np.maximum(X @ self.coef_[0] + (X @ self.coef_[1:].T).max(axis=1), 1e-9)


class ObliviousBoostingRegressor(RegressorMixin, BaseEstimator):
    """Gradient-boosted oblivious trees (every node of a level splits on the same feature/threshold).

    Squared loss. Oblivious trees make predict a handful of vectorised numpy operations over all
    trees at once, fast enough to call inside the simulator's per-iteration hot path.
    """

    def __init__(self, n_estimators: int = 120, depth: int = 4, learning_rate: float = 0.1,
                 max_bins: int = 32, l2: float = 3.0):
        self.n_estimators = n_estimators
        self.depth = depth
        self.learning_rate = learning_rate
        self.max_bins = max_bins
        self.l2 = l2

    def fit(self, X, y):
        X, y = check_X_y(X, y, dtype=np.float64, y_numeric=True)
        if self.depth < 1 or self.n_estimators < 0 or not 0 < self.learning_rate <= 1:
            raise ValueError("need depth >= 1, n_estimators >= 0 and 0 < learning_rate <= 1")
        n, f = X.shape
        self.n_features_in_ = f
        # Candidate thresholds: midpoints between distinct quantiles of each feature.
        thresholds = []
        for j in range(f):
            values = np.unique(np.quantile(X[:, j], np.linspace(0, 1, self.max_bins + 1)))
            thresholds.append((values[:-1] + values[1:]) / 2 if len(values) > 1 else np.array([np.inf]))
        num_thr = max(len(t) for t in thresholds)
        thr_matrix = np.full((f, num_thr), np.inf)
        for j, t in enumerate(thresholds):
            thr_matrix[j, : len(t)] = t
        # bins[i, j] = how many thresholds of feature j sample i exceeds.
        bins = np.stack([np.searchsorted(thr_matrix[j], X[:, j], side="left") for j in range(f)], axis=1)
        self.base_ = float(y.mean())
        pred = np.full(n, self.base_)
        feats = np.zeros((self.n_estimators, self.depth), dtype=np.int64)
        thrs = np.full((self.n_estimators, self.depth), np.inf)
        leaves = np.zeros((self.n_estimators, 2**self.depth))
        for t in range(self.n_estimators):
            residual = y - pred
            leaf = np.zeros(n, dtype=np.int64)
            for level in range(self.depth):
                num_leaves = 2**level
                best = (-np.inf, 0, 0)
                for j in range(f):
                    key = leaf * (num_thr + 1) + bins[:, j]
                    size = num_leaves * (num_thr + 1)
                    sums = np.bincount(key, weights=residual, minlength=size).reshape(num_leaves, num_thr + 1)
                    counts = np.bincount(key, minlength=size).reshape(num_leaves, num_thr + 1)
                    # Split after bin b: left = bins <= b (values below threshold b).
                    left_s = np.cumsum(sums, axis=1)[:, :-1]
                    left_c = np.cumsum(counts, axis=1)[:, :-1]
                    right_s = sums.sum(axis=1, keepdims=True) - left_s
                    right_c = counts.sum(axis=1, keepdims=True) - left_c
                    gain = (_ratio(left_s**2, left_c + self.l2) + _ratio(right_s**2, right_c + self.l2)).sum(axis=0)
                    gain[~np.isfinite(thr_matrix[j])] = -np.inf
                    k = int(np.argmax(gain))
                    if gain[k] > best[0]:
                        best = (gain[k], j, k)
                _, j, k = best
                feats[t, level], thrs[t, level] = j, thr_matrix[j, k]
                leaf = leaf * 2 + (X[:, j] > thr_matrix[j, k])
            sums = np.bincount(leaf, weights=residual, minlength=2**self.depth)
            counts = np.bincount(leaf, minlength=2**self.depth)
            leaves[t] = self.learning_rate * _ratio(sums, counts + self.l2)
            pred += leaves[t][leaf]
        self.features_, self.thresholds_, self.leaf_values_ = feats, thrs, leaves
        self._powers = 2 ** np.arange(self.depth - 1, -1, -1)
        self._tree_index = np.arange(self.n_estimators)
        return self

    def predict(self, X):
        check_is_fitted(self, "leaf_values_")
        X = check_array(X, dtype=np.float64)
        return self.predict_unchecked(X)

    def predict_unchecked(self, X: np.ndarray) -> np.ndarray:
        """predict without input validation, for the simulator's hot path (X: float64 (n, f))."""
        goes_right = X[:, self.features_] > self.thresholds_  # (n, trees, depth)
        leaf = goes_right @ self._powers  # (n, trees)
        return self.base_ + self.leaf_values_[self._tree_index, leaf].sum(axis=1)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (an empty leaf)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0)


def _log_inputs(X: np.ndarray, columns) -> np.ndarray:
    cols = X if columns is None else X[:, list(columns)]
    return np.log1p(cols)


class ResidualBoostedRegressor(RegressorMixin, BaseEstimator):
    """A roofline base (RooflineLinearRegressor on `linear_columns`, or the estimator `base`) times
    exp(ObliviousBoostingRegressor on log1p features).

    The boosted trees learn log(measured / roofline-linear): tile quantisation, occupancy and kernel
    choices the linear terms cannot express. Outside the data the correction stays at its edge value,
    so the prediction keeps the roofline trend.
    """

    def __init__(self, linear_columns=None, tree_columns=None, n_estimators: int = 120, depth: int = 4,
                 learning_rate: float = 0.1, l2: float = 3.0, base=None):
        self.base = base
        self.linear_columns = linear_columns
        self.tree_columns = tree_columns
        self.n_estimators = n_estimators
        self.depth = depth
        self.learning_rate = learning_rate
        self.l2 = l2

    def fit(self, X, y):
        X, y = _check_fit_inputs(X, y)
        self.n_features_in_ = X.shape[1]
        residual = _fit_base_log_residual(self, X, y)
        self.booster_ = ObliviousBoostingRegressor(
            n_estimators=self.n_estimators, depth=self.depth, learning_rate=self.learning_rate, l2=self.l2
        ).fit(_log_inputs(X, self.tree_columns), residual)
        return self

    def predict(self, X):
        check_is_fitted(self, "booster_")
        X = check_array(X, dtype=np.float64)
        return self.linear_.predict(X) * np.exp(self.booster_.predict(_log_inputs(X, self.tree_columns)))


def _fit_base_log_residual(estimator, X, y) -> np.ndarray:
    """Fit `estimator`'s base (its `base`, or a RooflineLinearRegressor on its `linear_columns`) into
    `estimator.linear_` and return log(y / base prediction), what the residual model then learns."""
    base = (RooflineLinearRegressor(columns=estimator.linear_columns) if estimator.base is None
            else clone(estimator.base))
    estimator.linear_ = base.fit(X, y)
    return np.log(y) - np.log(estimator.linear_.predict(X))


class ResidualInterpolatedRegressor(RegressorMixin, BaseEstimator):
    """A base estimator (RooflineLinearRegressor on `linear_columns`, or `base`) times a correction
    interpolated linearly in log(X[:, column]).

    For token-wise ops, whose time depends on the token count alone: the prediction passes through
    every measured point (the geometric mean where a count repeats); between profiled counts the
    correction is interpolated, beyond them it stays at the nearest measured ratio, so the base's trend
    carries the extrapolation.
    """

    def __init__(self, column: int = 0, linear_columns=None, base=None, median_window: int = 1):
        self.column = column
        self.linear_columns = linear_columns
        self.base = base
        self.median_window = median_window

    def fit(self, X, y):
        X, y = _check_fit_inputs(X, y)
        if self.median_window < 1 or self.median_window % 2 == 0:
            raise ValueError(f"median_window must be an odd number >= 1, got {self.median_window}")
        self.n_features_in_ = X.shape[1]
        log_ratio = _fit_base_log_residual(self, X, y)
        x = np.log(np.maximum(X[:, self.column], 1e-12))
        order = np.argsort(x, kind="stable")
        # Average repeated x values so np.interp sees a function.
        unique_x, inverse = np.unique(x[order], return_inverse=True)
        self.knots_x_ = unique_x
        knots = np.bincount(inverse, weights=log_ratio[order]) / np.bincount(inverse)
        self.knots_log_ratio_ = running_median(knots, self.median_window)
        return self

    def predict(self, X):
        check_is_fitted(self, "knots_x_")
        X = check_array(X, dtype=np.float64)
        x = np.log(np.maximum(X[:, self.column], 1e-12))
        return self.linear_.predict(X) * np.exp(np.interp(x, self.knots_x_, self.knots_log_ratio_))


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median of each value and its (window - 1) / 2 neighbours on either side (fewer at the ends).

    Why: cuBLAS picks a slower kernel at isolated token counts (a 2x spike at one count whose
    neighbours 8 tokens away are on the trend); the median of a few neighbouring knots keeps such a
    spike out of the trend used between measured counts."""
    if window <= 1 or len(values) < 3:
        return np.asarray(values, dtype=np.float64).copy()
    half = window // 2
    padded = np.pad(np.asarray(values, dtype=np.float64), half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)
    out = np.median(windows, axis=1)
    # At the ends the edge padding would repeat one value: use the shrinking symmetric window instead.
    for i in range(min(half, len(values))):
        out[i] = np.median(values[: 2 * i + 1])
        out[-1 - i] = np.median(values[len(values) - 2 * i - 1:])
    return out


class TreeRegressor(RegressorMixin, BaseEstimator):
    """A scikit-learn tree ensemble ('random_forest' or 'gradient_boosting') on log1p features,
    predicting log time. Accurate inside the profiled grid, constant outside it."""

    def __init__(self, kind: str = "random_forest", n_estimators: int = 100, learning_rate: float = 0.1,
                 random_state: int = 0):
        self.kind = kind
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.random_state = random_state

    def fit(self, X, y):
        X, y = _check_fit_inputs(X, y)
        self.n_features_in_ = X.shape[1]
        if self.kind == "random_forest":
            # n_jobs=1: on tables of a few hundred rows, worker start-up costs more than it saves.
            model = RandomForestRegressor(n_estimators=self.n_estimators, min_samples_leaf=1,
                                          random_state=self.random_state, n_jobs=1)
        elif self.kind == "gradient_boosting":
            model = GradientBoostingRegressor(n_estimators=self.n_estimators, max_depth=3, learning_rate=self.learning_rate,
                                              subsample=1.0, random_state=self.random_state)
        else:
            raise ValueError(f"kind must be 'random_forest' or 'gradient_boosting', got {self.kind!r}")
        self.model_ = model.fit(np.log1p(X), np.log(y))
        return self

    def predict(self, X):
        check_is_fitted(self, "model_")
        X = check_array(X, dtype=np.float64)
        return np.exp(self.model_.predict(np.log1p(X)))
