"""Fit an MDN from Python: ``mdnlab.MDN``, a scikit-learn style estimator.

    from mdnlab import MDN
    mdn = MDN(n_components=2, hidden_sizes=(50,), penalty_select="validation").fit(X, y)
    mdn.predict(X_new)                 # the conditional mean
    mdn.score(X_test, y_test)          # mean log-likelihood per row (higher is better)
    mdn.model_.quantile(X_new, 0.9)    # the fitted distribution: mdnlab.fitted.FittedModel
    print(mdn.summary(X_new[:3]))      # estimation, fit, criteria, predictions with both SEs

The estimator is the one ``src/train.py`` runs (the same ``conf/`` defaults, the same checks
and messages), without Hydra's run folders or a tracking store: X and y are split into training
and validation rows by ``val_fraction`` (no test rows: score on your own), Adam with early
stopping, the polish to the penalized optimum, the penalty as ``penalty_select`` says, and the
inference step (inverse Hessian and sandwich) when ``standard_errors``. ``get_params`` and
``set_params`` are scikit-learn's (``MDN`` is a ``BaseEstimator``), so ``clone``,
``cross_val_score`` and ``GridSearchCV`` work on it. Nothing is logged to MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from sklearn.base import BaseEstimator

from mdnlab.data.splits import split_rows
from mdnlab.data.table import (
    Table,
    check_not_constant,
    check_row_count,
    table_from_arrays,
    table_from_frame,
)
from mdnlab.errors import ConfigError, DataError, MdnlabError
from mdnlab.families import family_class
from mdnlab.fitted.model import FittedModel
from mdnlab.fitted.schema import Schema
from mdnlab.progress import silenced

SOURCE = "MDN.fit(X, y)"


class NotFittedError(MdnlabError, AttributeError):
    """Raised by ``predict``/``score``/``summary`` before ``fit``; an ``AttributeError`` too,
    as scikit-learn's is."""


class MDN(BaseEstimator):
    """A mixture density network fitted by penalized maximum likelihood; see the module doc.

    Parameters map to the CLI's config: ``family`` (model=gaussian | categorical | wishart),
    ``n_components`` (model.n_components), ``hidden_sizes`` and ``activation`` (model.*),
    ``penalty``, ``penalty_select`` (none | evidence | validation), ``scale_penalty``,
    ``restarts`` and ``polish`` (train.*), ``max_epochs``, ``patience`` and ``lr`` (trainer.*),
    ``val_fraction`` (data.val_fraction), ``seed``, ``standard_errors`` (inference.enabled);
    ``overrides``: further Hydra overrides as on the command line (e.g.
    ``["train.penalty_path.count=8"]``). ``verbose=False`` silences the progress lines (not
    the warnings).
    """

    def __init__(
        self,
        family: str = "gaussian",
        n_components: int = 3,
        hidden_sizes: Sequence[int] = (4,),
        activation: str = "tanh",
        penalty: float = 3.0,
        penalty_select: str = "none",
        scale_penalty: float = 0.0,
        restarts: int = 1,
        polish: bool = True,
        max_epochs: int = 3000,
        patience: int = 200,
        lr: float = 0.01,
        val_fraction: float = 0.15,
        seed: int = 0,
        standard_errors: bool = True,
        overrides: Sequence[str] = (),
        verbose: bool = True,
    ):
        self.family = family
        self.n_components = n_components
        self.hidden_sizes = hidden_sizes
        self.activation = activation
        self.penalty = penalty
        self.penalty_select = penalty_select
        self.scale_penalty = scale_penalty
        self.restarts = restarts
        self.polish = polish
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr = lr
        self.val_fraction = val_fraction
        self.seed = seed
        self.standard_errors = standard_errors
        self.overrides = overrides
        self.verbose = verbose

    # --- the configuration ------------------------------------------------------------------------
    def config(self):
        """The run configuration this estimator fits with (a Hydra DictConfig)."""
        from mdnlab.configuration import compose_train_config

        for name in ("polish", "standard_errors", "verbose"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"MDN({name}={getattr(self, name)!r}): expected True or False")
        sizes = self.hidden_sizes
        if isinstance(sizes, (int, np.integer)):
            sizes = (int(sizes),)
        if not all(isinstance(h, (int, np.integer)) and not isinstance(h, bool) for h in sizes):
            raise ConfigError(f"MDN(hidden_sizes={self.hidden_sizes!r}): expected whole numbers")
        if isinstance(self.overrides, str):
            raise ConfigError(
                f"MDN(overrides={self.overrides!r}): expected a list of key=value strings"
            )
        overrides = [
            "data=file",
            f"data.path='{SOURCE}'",
            f"model={self.family}",
            f"model.n_components={self.n_components}",
            f"model.hidden_sizes=[{','.join(str(int(h)) for h in sizes)}]",
            f"model.activation={self.activation}",
            f"train.penalty={self.penalty}",
            f"train.penalty_select={self.penalty_select}",
            f"train.scale_penalty={self.scale_penalty}",
            f"train.restarts={self.restarts}",
            f"train.polish={str(self.polish).lower()}",
            f"trainer.max_epochs={self.max_epochs}",
            f"trainer.patience={self.patience}",
            f"trainer.lr={self.lr}",
            f"data.val_fraction={self.val_fraction}",
            "data.test_fraction=0.0",
            f"seed={self.seed}",
            f"inference.enabled={str(self.standard_errors).lower()}",
            *self.overrides,
        ]
        try:
            return compose_train_config(overrides)
        except Exception as err:  # Hydra's own errors name the override at fault
            if isinstance(err, MdnlabError):
                raise
            raise ConfigError(f"MDN: {str(err).splitlines()[0]}") from None

    # --- fitting ----------------------------------------------------------------------------------
    def fit(self, X, y) -> MDN:
        """Fit on X (n, d) and y ((n,), (n, q), (n, p, p) or class labels), arrays or
        DataFrames (text x columns one-hot, as in ``data=file``). Returns the estimator."""
        from mdnlab.config_checks import check_run_config
        from mdnlab.pipeline import (
            Estimation,
            SplitTensors,
            build_module,
            configure_threads,
            estimate,
            infer,
            n_weights,
        )

        cfg = self.config()
        check_run_config(cfg)
        estimation = Estimation.from_config(cfg)
        family = family_class(cfg.model.family)
        table, x_columns = fit_table(X, y, family, int(cfg.data.get("min_rows", 10)))
        seed = int(cfg.seed)
        splits = split_rows(
            table.n_rows,
            float(cfg.data.val_fraction),
            0.0,
            "random",
            seed,
            table.source,
            strata=family.strata(table.y),
        )
        data = SplitTensors.from_table(table, splits)
        pl.seed_everything(seed, workers=False, verbose=False)
        with silenced(not self.verbose):
            module = build_module(cfg, table, data)
            work = data.size("train") * n_weights(module) * estimation.restarts
            configure_threads(cfg.get("threads", "auto"), work)
            fit = estimate(cfg, table, data, estimation, "")
            module = fit.module
            inference = None
            if self.standard_errors:
                inference = infer(
                    cfg,
                    module,
                    data,
                    data.x["train"][:1].numpy(),
                    "",
                    fit.penalty,
                    fit.scale_penalty,
                )
        self.fit_ = fit
        self.metrics_ = dict(fit.metrics) | fit_metrics(module, data)
        if inference is not None:
            self.metrics_ |= inference.metrics
        self.n_train_, self.n_val_ = data.size("train"), data.size("val")
        self.config_ = OmegaConf.to_container(cfg, resolve=True)
        self.model_ = FittedModel(
            module,
            Schema(x_columns, table.encodings, list(table.y_names), table.y_levels),
            self.config_,
            source=SOURCE,
            penalty=fit.penalty,
            scale_penalty=fit.scale_penalty,
            training=(data.x["train"], data.y["train"]),
        )
        return self

    # --- using the fit ----------------------------------------------------------------------------
    def _fitted(self) -> FittedModel:
        if not hasattr(self, "model_"):
            raise NotFittedError("this MDN is not fitted yet: call fit(X, y) first")
        return self.model_

    def predict(self, X) -> np.ndarray:
        """The conditional mean: (n,) for a scalar y, (n, q) for several; Wishart (n, p, p);
        categorical: the most probable class code per row, (n,) or (n, D)."""
        model = self._fitted()
        mean = model.mean(X)
        if isinstance(mean, list):  # categorical: class probabilities per y column
            codes = np.column_stack([p.argmax(axis=1) for p in mean])
            return codes[:, 0] if codes.shape[1] == 1 else codes
        return mean[:, 0] if model.scalar_y else mean

    def score(self, X, y) -> float:
        """Mean log-likelihood per row of (X, y), nats, original units (higher is better)."""
        if isinstance(y, (pd.Series, pd.DataFrame)):
            y = y.to_numpy()
        return float(np.mean(self._fitted().log_prob(X, y)))

    def summary(self, X=None, what: Sequence[str] = ("mean",)) -> str:
        """A statsmodels-style text summary; with ``X``, a table of the predicted quantities
        ``what`` at its rows with both standard errors (inverse Hessian and sandwich)."""
        from mdnlab.summary import summary_text

        self._fitted()
        predictions = None
        with silenced(not self.verbose):
            if X is not None:
                predictions = self.model_.predict(X, what=list(what), se=self.standard_errors)
            return summary_text(self, predictions)


def fit_table(X, y, family, min_rows: int) -> tuple[Table, list[str]]:
    """X and y as a checked table, with the messages ``data=file`` gives for a file, and the
    names of X's columns as given (before text columns are one-hot encoded)."""
    if isinstance(X, pd.DataFrame):
        y_frame = y.to_frame() if isinstance(y, pd.Series) else y
        if not isinstance(y_frame, pd.DataFrame):
            y_frame = pd.DataFrame(np.asarray(y).reshape(len(np.asarray(y)), -1))
            y_frame.columns = (
                ["y"] if y_frame.shape[1] == 1 else [f"y{j}" for j in range(y_frame.shape[1])]
            )
        y_frame = y_frame.rename(columns={None: "y"})
        if len(X) != len(y_frame):
            raise DataError(
                f"{SOURCE}: X has {len(X)} rows but y has {len(y_frame)}; expected equal"
            )
        x_cols, y_cols = [str(c) for c in X.columns], [str(c) for c in y_frame.columns]
        clash = sorted(set(x_cols) & set(y_cols))
        if clash:
            raise DataError(f"{SOURCE}: column(s) {', '.join(clash)} in both X and y")
        frame = pd.concat(
            [
                X.set_axis(x_cols, axis=1).reset_index(drop=True),
                y_frame.set_axis(y_cols, axis=1).reset_index(drop=True),
            ],
            axis=1,
        )
        table = table_from_frame(frame, x_cols, y_cols, SOURCE, text_y=family.text_targets)
    else:
        y_values = y.to_numpy() if isinstance(y, (pd.Series, pd.DataFrame)) else y
        table = table_from_arrays(np.asarray(X), np.asarray(y_values), None, None, SOURCE)
        x_cols = list(table.x_names)
    check_row_count(table, min_rows)
    check_not_constant(table.x, table.x_names, table.source, "x")
    table.y = family.prepare_targets(table.y, table.source, table.y_names)
    return table, x_cols


def fit_metrics(module, data) -> dict[str, float]:
    """train/nll and val/nll at the estimate, as a run logs them."""
    out = {}
    with torch.no_grad():
        for split in ("train", "val"):
            if data.size(split):
                out[f"{split}/nll"] = float(module.nll(data.x[split], data.y[split]))
    return out
