"""Peers fitted on a UCI split's own rows: NGBoost (Duan et al. 2020) with its early-stopping
recipe. ``ngboost`` is the ``bench`` extra; only this module imports it, and only when called.

NGBoost sees exactly the rows mdnlab sees: it is fitted on the split's training rows, the
validation rows choose the number of boosting rounds (``early_stopping_rounds`` after the
best), and the test rows are used once, for the scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import stats

from mdnlab.errors import ConfigError

INTERVAL = 0.9


@dataclass(frozen=True)
class NGBoostSettings:
    """The published UCI settings: Normal, depth-3 trees, 2,000 rounds at learning rate 0.01,
    full batches; rounds chosen on the validation rows."""

    n_estimators: int = 2000
    learning_rate: float = 0.01
    minibatch_frac: float = 1.0
    early_stopping_rounds: int = 50


@dataclass(frozen=True)
class PeerScores:
    nll: float  # mean test NLL, nats per row, original units
    rmse: float
    coverage_90: float
    pit_ks: float
    seconds: float
    rounds: int  # boosting rounds kept


def gaussian_scores(y: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> dict[str, float]:
    """Test NLL, RMSE, central 90% interval coverage and the PIT's KS distance of
    N(mean, sd^2) predictions on targets y."""
    y, mean, sd = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (y, mean, sd))
    pit = stats.norm.cdf(y, loc=mean, scale=sd)
    return {
        "nll": float(-stats.norm.logpdf(y, loc=mean, scale=sd).mean()),
        "rmse": float(np.sqrt(np.mean((y - mean) ** 2))),
        "coverage_90": float(np.mean(np.abs(pit - 0.5) <= INTERVAL / 2)),
        "pit_ks": float(stats.kstest(pit, "uniform").statistic),
    }


def fit_ngboost(
    x_train, y_train, x_val, y_val, x_test, y_test, seed: int, settings=NGBoostSettings()
) -> PeerScores:
    try:
        from ngboost import NGBRegressor
        from ngboost.distns import Normal
        from ngboost.learners import default_tree_learner
        from sklearn.base import clone
    except ImportError:
        raise ConfigError(
            "the NGBoost peer needs the bench extra: pip install -e '.[bench]' (make setup "
            "installs it)"
        ) from None
    started = time.perf_counter()
    # NGBoost's default depth-3 tree, seeded: unseeded, sklearn's trees break ties between
    # features with numpy's global generator, and the fit changes from call to call.
    model = NGBRegressor(
        Dist=Normal,
        Base=clone(default_tree_learner).set_params(random_state=seed),
        n_estimators=settings.n_estimators,
        learning_rate=settings.learning_rate,
        minibatch_frac=settings.minibatch_frac,
        random_state=seed,
        verbose=False,
    )
    model.fit(
        x_train,
        np.ravel(y_train),
        X_val=x_val,
        Y_val=np.ravel(y_val),
        early_stopping_rounds=settings.early_stopping_rounds,
    )
    rounds = model.best_val_loss_itr
    rounds = len(model.base_models) if rounds is None else int(rounds) + 1
    params = model.pred_dist(x_test, max_iter=rounds).params
    scores = gaussian_scores(y_test, params["loc"], params["scale"])
    return PeerScores(**scores, seconds=time.perf_counter() - started, rounds=rounds)
