"""The Python API (``mdnlab.MDN``): the same estimate as a CLI run on the same data and config,
scikit-learn's parameter protocol (clone, cross_val_score), the score against scipy's mixture
density, DataFrames with text columns, and bad input named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mdnlab
from mdnlab.api import MDN, NotFittedError
from mdnlab.errors import ConfigError, DataError

pytestmark = pytest.mark.slow

SMALL = dict(n_components=2, hidden_sizes=(3,), max_epochs=60, verbose=False)


def two_branch(n=150, seed=7):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    y = rng.choice([-1.0, 1.0], n) * (1 + x) + 0.2 * rng.standard_normal(n)
    return x[:, None], y


def test_the_estimate_is_the_cli_runs_on_the_same_rows(tmp_path):
    from mdnlab.configuration import compose_train_config
    from mdnlab.pipeline import run

    x, y = two_branch()
    path = tmp_path / "d.csv"
    pd.DataFrame({"x": x[:, 0], "y": y}).to_csv(path, index=False)
    frame = pd.read_csv(path)  # the values the CLI reads
    mdn = MDN(**SMALL, penalty=2.0, overrides=["train.polish_max_iter=200"]).fit(
        frame[["x"]], frame["y"]
    )
    cfg = compose_train_config(
        [
            "data=file",
            f"data.path={path}",
            "data.x_cols=[x]",
            "data.y_cols=[y]",
            "data.test_fraction=0.0",
            "model.n_components=2",
            "model.hidden_sizes=[3]",
            "trainer.max_epochs=60",
            "train.penalty=2.0",
            "train.polish_max_iter=200",
            f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "logger.log_model=false",
            "diagnostics.enabled=false",
        ]
    )
    metrics = run(cfg, out_dir=tmp_path / "run")
    for key in (
        "train/nll",
        "val/nll",
        "train/objective",
        "train/grad_norm",
        "val/nll_before_polish",
    ):
        assert mdn.metrics_[key] == pytest.approx(metrics[key], rel=1e-12, abs=1e-15), key
    assert mdn.metrics_["inference/tic_trace"] == pytest.approx(
        metrics["inference/tic_trace"], rel=1e-9
    )
    assert mdn.n_train_ + mdn.n_val_ == 150


def test_score_predict_and_the_fitted_distribution_agree_with_scipy():
    x, y = two_branch(seed=3)
    mdn = MDN(**SMALL, standard_errors=False)
    assert mdn.fit(x, y) is mdn
    parts = mdn.model_.components(x)
    weights = parts["weights"]
    means = parts["means"][..., 0]
    sds = np.sqrt(parts["covariances"][..., 0, 0])
    density = (weights * stats.norm.pdf(y[:, None], means, sds)).sum(axis=1)
    assert mdn.score(x, y) == pytest.approx(np.mean(np.log(density)), rel=1e-10)
    np.testing.assert_allclose(mdn.predict(x), (weights * means).sum(axis=1), rtol=1e-10)
    assert mdn.predict(x).shape == (150,)


def test_scikit_learn_clones_it_and_cross_validates_it():
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, cross_val_score

    mdn = MDN(**SMALL, standard_errors=False, penalty=5.0)
    copy = clone(mdn)
    assert copy.get_params() == mdn.get_params() and copy is not mdn
    x, y = two_branch(n=120)
    scores = cross_val_score(mdn, x, y, cv=2)
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    search = GridSearchCV(mdn, {"n_components": [1, 2]}, cv=2).fit(x, y)
    # two branches: a mixture of two fits the held-out rows better than one Gaussian
    assert search.best_params_ == {"n_components": 2}
    assert mdnlab.MDN is MDN


def test_a_dataframe_with_a_text_column_fits_and_predicts_by_column_name():
    rng = np.random.default_rng(5)
    n = 160
    group = rng.choice(["a", "b"], n)
    x = rng.uniform(-1, 1, n)
    y = np.where(group == "a", 2.0, -2.0) + x + 0.3 * rng.standard_normal(n)
    X = pd.DataFrame({"x": x, "group": group})
    mdn = MDN(**(SMALL | {"n_components": 1}), standard_errors=False)
    mdn.fit(X, pd.Series(y, name="y"))
    new = pd.DataFrame({"group": ["a", "b"], "x": [0.0, 0.0]})  # columns in another order
    mean = mdn.predict(new)
    assert mean[0] - mean[1] == pytest.approx(4.0, abs=0.6)


def test_summary_names_the_fit_and_gives_both_standard_errors():
    x, y = two_branch(seed=11)
    mdn = MDN(**SMALL).fit(x, y)
    text = mdn.summary(x[:2])
    for part in ("Family", "Converged", "AIC", "BIC", "TIC", "IM test", "se_sandwich"):
        assert part in text, part
    table = mdn.model_.predict(x[:2], se=True)
    assert np.all(table.se_hessian > 0) and np.all(table.se_sandwich > 0)


@pytest.mark.parametrize(
    "params, x_bad, y_bad, error, message",
    [
        ({"polish": "no"}, None, None, ConfigError, "MDN(polish='no'): expected True or False"),
        ({"penalty": -1}, None, None, ConfigError, "train.penalty must be a finite number >= 0"),
        ({"family": "poisson"}, None, None, ConfigError, "MDN:"),
        ({}, "nan", None, DataError, "MDN.fit(X, y): array x, row 4, entry 0: value nan"),
        ({}, None, "short", DataError, "x has 150 rows but y has 149"),
        ({}, "complex", None, DataError, "expected real numbers"),
    ],
)
def test_bad_input_is_named(params, x_bad, y_bad, error, message):
    x, y = two_branch()
    if x_bad == "nan":
        x = x.copy()
        x[4, 0] = np.nan
    if x_bad == "complex":
        x = x + 1j
    if y_bad == "short":
        y = y[:-1]
    with pytest.raises(error) as caught:
        MDN(**SMALL, **params).fit(x, y)
    assert message in str(caught.value)


def test_unfitted_use_and_unknown_parameters_are_refused():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        MDN().predict(np.zeros((2, 1)))
    with pytest.raises(ValueError, match="Invalid parameter 'depth'"):
        MDN().set_params(depth=3)
