"""The estimator families follow scikit-learn's contract and learn what they should."""
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from simulator.runtime.model import (
    ObliviousBoostingRegressor,
    ResidualBoostedRegressor,
    ResidualInterpolatedRegressor,
    RooflineLinearRegressor,
    TreeRegressor,
)

ALL = [RooflineLinearRegressor(), ResidualBoostedRegressor(n_estimators=10), ResidualInterpolatedRegressor(),
       TreeRegressor(kind="random_forest", n_estimators=5), TreeRegressor(kind="gradient_boosting", n_estimators=5)]


def roofline_data(n=60, seed=0):
    """time = 0.01 + max(flops / 1e9, bytes / 1e8) on token counts 1..4096."""
    rng = np.random.default_rng(seed)
    tokens = np.unique(np.round(np.geomspace(1, 4096, n)))
    flops, bytes_ = 2e6 * tokens, 1e6 + 1e3 * tokens
    y = 0.01 + np.maximum(flops / 1e9, bytes_ / 1e8)
    X = np.column_stack([tokens, flops, bytes_, np.maximum(flops / 1e9, bytes_ / 1e8)])
    return X, y * (1 + 0.001 * rng.standard_normal(len(y)))


@pytest.mark.parametrize("estimator", ALL, ids=lambda e: type(e).__name__ + getattr(e, "kind", ""))
def test_contract_params_only_in_init_and_fit_returns_self(estimator):
    params = estimator.get_params()
    twin = clone(estimator)
    assert twin.get_params() == params
    assert not [k for k in vars(twin) if k.endswith("_") and not k.startswith("_")]  # nothing learned yet
    with pytest.raises(NotFittedError):
        twin.predict(np.ones((2, 4)))
    X, y = roofline_data()
    assert twin.fit(X, y) is twin
    assert twin.predict(X).shape == y.shape


@pytest.mark.parametrize("estimator", ALL, ids=lambda e: type(e).__name__ + getattr(e, "kind", ""))
def test_inputs_are_validated(estimator):
    X, y = roofline_data()
    with pytest.raises(ValueError):
        clone(estimator).fit(X, -y)  # times must be positive
    with pytest.raises(ValueError):
        clone(estimator).fit(np.where(X > 100, np.nan, X), y)
    with pytest.raises(ValueError):
        clone(estimator).fit(X[:5], y[:4])


def test_roofline_linear_recovers_exact_costs():
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 100, size=(50, 3))
    y = 0.5 + X @ np.array([0.2, 0.0, 0.03])
    model = RooflineLinearRegressor().fit(X, y)
    np.testing.assert_allclose(model.coef_, [0.2, 0.0, 0.03], atol=1e-9)
    assert model.intercept_ == pytest.approx(0.5)
    assert (model.coef_ >= 0).all()


def test_roofline_linear_coefficients_stay_non_negative():
    rng = np.random.default_rng(2)
    X = rng.uniform(1, 10, size=(40, 2))
    y = 10 - 0.5 * X[:, 0] + X[:, 1]  # a negative true slope: the fit must not use it
    model = RooflineLinearRegressor().fit(X, y)
    assert (model.coef_ >= 0).all() and model.intercept_ >= 0


def test_oblivious_boosting_learns_a_step_and_predicts_vectorised():
    X = np.linspace(0, 10, 200)[:, None]
    y = np.where(X[:, 0] > 4.0, 3.0, 1.0)
    model = ObliviousBoostingRegressor(n_estimators=60, depth=2, learning_rate=0.3, l2=0.0, max_bins=256).fit(X, y)
    np.testing.assert_allclose(model.predict(X), y, atol=0.02)
    assert model.predict(np.array([[2.0], [8.0]])) == pytest.approx([1.0, 3.0], abs=0.02)


def test_interpolated_correction_hits_knots_and_extrapolates_along_the_roofline():
    X, y = roofline_data()
    model = ResidualInterpolatedRegressor(column=0, linear_columns=[1, 2, 3]).fit(X, y)
    np.testing.assert_allclose(model.predict(X), y, rtol=1e-9)
    # Beyond the data (2x the largest token count) the prediction keeps the linear trend.
    far = X[-1:] * np.array([[2, 2, 2, 2]])
    far[0, 2] = 1e6 + 1e3 * far[0, 0]
    truth = 0.01 + max(far[0, 1] / 1e9, far[0, 2] / 1e8)
    assert model.predict(far)[0] == pytest.approx(truth, rel=0.02)


def test_interpolated_correction_on_any_base_passes_through_measured_points():
    X, y = roofline_data()
    y = y.copy()
    y[20] *= 1.8  # a count that hits a slow kernel
    base = RooflineLinearRegressor(columns=[1, 2, 3])
    model = ResidualInterpolatedRegressor(column=0, base=base).fit(X, y)
    np.testing.assert_allclose(model.predict(X), y, rtol=1e-9)
    assert not hasattr(base, "coef_")  # the base is cloned, not fitted in place
    # Halfway (in log tokens) to a neighbour, half of the slow point's excess (in log) remains.
    mid = np.sqrt(X[20] * X[21])[None, :]
    plain = ResidualInterpolatedRegressor(column=0, base=base).fit(np.delete(X, 20, 0), np.delete(y, 20))
    assert 1.1 < model.predict(mid)[0] / plain.predict(mid)[0] < 1.5
