"""A statsmodels-style text summary of an estimator fitted from Python (``MDN.summary``):
data and model, convergence, NLL, information criteria, effective parameters, White's
information-matrix test, the identifiability flags, and predictions with both SEs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mdnlab.diagnostics.components import component_report
from mdnlab.diagnostics.im_test import im_test
from mdnlab.diagnostics.labels import reference_rows
from mdnlab.diagnostics.model_selection import information_criteria
from mdnlab.errors import MdnlabError

WIDTH = 78
# White's test forms A (P x P): skipped above this many weights, as in a run
IM_TEST_MAX_PARAMS = 2000


def summary_text(mdn, predictions: pd.DataFrame | None = None) -> str:
    model, fit, metrics = mdn.model_, mdn.fit_, mdn.metrics_
    module = model.module
    x_train, y_train = model.training
    n_params = sum(p.numel() for p in module.net.parameters())
    family = module.family
    rows = [
        ("Family", f"{family.name}, K = {family.n_components}"),
        ("y shape", str(tuple(family.event_shape))),
        ("Network", f"{list(module.hparams.hidden_sizes)} {module.hparams.activation}"),
        ("Weights", f"{n_params}"),
        ("Training rows", f"{mdn.n_train_}"),
        ("Validation rows", f"{mdn.n_val_}"),
        ("Penalty lambda", f"{fit.penalty:.4g} ({mdn.penalty_select})"),
        ("Scale penalty c", _scale_text(fit, metrics)),
        ("Restarts", f"{len(fit.members)} (best: {fit.best.index})"),
        ("Converged", _convergence_text(fit, mdn)),
        ("Train NLL", f"{metrics.get('train/nll', np.nan):.4f} nats/row"),
        ("Val NLL", _val_text(metrics)),
    ]
    criteria = information_criteria(
        pd.DataFrame(
            {
                "n_train": [mdn.n_train_],
                "train_nll": [metrics.get("train/nll", np.nan)],
                "n_params": [n_params],
                "tic_trace": [metrics.get("inference/tic_trace", np.nan)],
            }
        )
    ).iloc[0]
    rows += [
        ("AIC", f"{criteria.aic:.2f}"),
        ("BIC", f"{criteria.bic:.2f}"),
        ("TIC", "n/a (standard_errors=False)" if np.isnan(criteria.tic) else f"{criteria.tic:.2f}"),
        ("Effective params", _effective_text(metrics)),
        ("IM test", _im_text(module, x_train, y_train, fit, n_params)),
        ("Components", _components_text(module, x_train)),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["mdnlab MDN results".center(WIDTH), "=" * WIDTH]
    lines += [f"{key:<{width}}  {value}" for key, value in rows]
    if predictions is not None:
        lines += ["-" * WIDTH, "Predictions (delta-method SEs: inverse Hessian, sandwich)"]
        lines += [predictions.to_string(index=False, float_format=lambda v: f"{v:.5g}")]
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def _scale_text(fit, metrics) -> str:
    if not fit.scale_penalty:
        return "0 (none)"
    text = f"{fit.scale_penalty:g}"
    if "train/scale_reference" in metrics:
        text += f" (reference variance {metrics['train/scale_reference']:.3g}, standardised)"
    return text


def _convergence_text(fit, mdn) -> str:
    if not mdn.polish:
        return f"not polished (early-stopped Adam, epoch {fit.best.best_epoch})"
    grad = fit.best.grad_max
    return f"{'yes' if fit.best.converged else 'NO'} (max|grad| {grad:.2e})"


def _val_text(metrics) -> str:
    if "val/nll" not in metrics:
        return "n/a (no validation rows)"
    text = f"{metrics['val/nll']:.4f}"
    if "val/nll_before_polish" in metrics:
        text += f" (early-stopped weights: {metrics['val/nll_before_polish']:.4f})"
    return text


def _effective_text(metrics) -> str:
    value = metrics.get("inference/effective_params", metrics.get("train/effective_params"))
    if value is None:
        return "n/a (standard_errors=False)"
    trace = metrics.get("inference/tic_trace")
    extra = "" if trace is None else f"; tr(A^-1 B) = {trace:.1f}"
    return f"{value:.1f}{extra}"


def _im_text(module, x, y, fit, n_params) -> str:
    if n_params > IM_TEST_MAX_PARAMS:
        return f"skipped ({n_params} weights > {IM_TEST_MAX_PARAMS})"
    try:
        test = im_test(module, x, y, penalty=fit.penalty, debias=True)
    except (MdnlabError, RuntimeError, ValueError) as err:
        return f"not computed ({str(err).splitlines()[0]})"
    return (
        f"T = {test.statistic:.2f} on {test.df} df, chi-square p = {test.pvalue:.3g} "
        "(a screen: over-rejects at this n; the bootstrap test needs the CLI)"
    )


def _components_text(module, x) -> str:
    with torch.no_grad():
        report = component_report(module, reference_rows(x))
    return report.describe()
