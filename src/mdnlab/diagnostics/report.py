"""The diagnostics step of a run: what is identified, written under ``diagnostics/``.

Metrics ``diagnostics/*`` and, in the run's ``diagnostics/`` artifact folder:
``identifiability.json`` (notes, the order, effective K), ``components.csv`` and
``component_weights.png``; with R >= 2 restarts ``restarts_alignment.csv``,
``restart_pairs.csv`` and ``restarts_agreement.png``. Nothing here branches on the family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mdnlab.diagnostics import figures
from mdnlab.diagnostics.components import component_report
from mdnlab.diagnostics.im_test import im_test
from mdnlab.diagnostics.labels import reference_rows
from mdnlab.diagnostics.restarts import restart_report
from mdnlab.diagnostics.symmetries import predicted_null_dimension
from mdnlab.errors import ConfigError
from mdnlab.estimation.refit import refit_on_targets, simulate_targets
from mdnlab.progress import say, warn

IM_SUBSETS = ("output_bias", "all")
# Restarts per fit at which the IM test's bootstrap p-value reached its size (docs/identifiability.md)
CALIBRATED_RESTARTS = 5


@dataclass(frozen=True)
class DiagnosticSettings:
    """``diagnostics.*``, checked before any run is created."""

    enabled: bool = True
    reference_rows: int = 500
    negligible_weight: float = 0.01
    duplicate_skl: float = 0.01
    identified_z: float = 3.0
    im_test: bool = True
    im_subset: str = "output_bias"
    im_bootstrap: int = 0
    im_max_params: int = 2000
    im_rtol: float = 1e-10

    @classmethod
    def from_config(cls, d) -> DiagnosticSettings:
        if d is None:
            return cls()
        im = d.get("im_test") or {}
        settings = cls(
            bool(d.get("enabled", True)),
            _number(d, "reference_rows", 500, int, 1),
            _number(d, "negligible_weight", 0.01, float, 0.0),
            _number(d, "duplicate_skl", 0.01, float, 0.0),
            _number(d, "identified_z", 3.0, float, 0.0),
            bool(im.get("enabled", True)),
            str(im.get("subset", "output_bias")),
            _number(im, "bootstrap", 0, int, 0, "diagnostics.im_test."),
            _number(im, "max_params", 2000, int, 1, "diagnostics.im_test."),
            _number(im, "rtol", 1e-10, float, 0.0, "diagnostics.im_test."),
        )
        if settings.im_subset not in IM_SUBSETS:
            raise ConfigError(
                f"diagnostics.im_test.subset={settings.im_subset!r}; expected one of "
                f"{', '.join(IM_SUBSETS)}"
            )
        return settings


def _number(section, key, default, kind, low, prefix="diagnostics."):
    value = section.get(key, default)
    try:
        number = kind(value)
        if isinstance(value, bool) or number != float(value) or not number >= low:
            raise ValueError
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{prefix}{key} must be {what} >= {low}, got {value!r}") from None
    return number


def diagnose(
    fit,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    inference,
    settings: DiagnosticSettings,
    folder: Path,
    title: str,
    label: str = "",
    seed: int = 0,
    polish_tol: float = 1e-6,
    polish_max_iter: int = 5000,
) -> dict:
    """``fit``: the pipeline's Fit (best module, members, penalty, ordering report);
    ``inference``: its InferenceResult or None; ``seed`` draws the bootstrap's targets, which
    are polished to ``polish_tol`` in at most ``polish_max_iter`` iterations."""
    folder.mkdir(parents=True, exist_ok=True)
    module = fit.module
    x_ref = reference_rows(x_train, settings.reference_rows)
    metrics: dict[str, float] = {}
    notes = list(module.family.identifiability_notes())
    for note in notes:
        warn(f"{label}identifiability: {note}")

    components = component_report(module, x_ref, settings.negligible_weight, settings.duplicate_skl)
    metrics |= components.metrics()
    components.table.to_csv(folder / "components.csv", index=False)
    with torch.no_grad():
        weights = module.mixture(x_ref).mixture_distribution.probs.numpy()
    one_x = x_ref.shape[1] == 1
    figures.component_weights(
        weights,
        x_ref[:, 0].numpy() if one_x else None,
        folder / "component_weights.png",
        f"{title}: mixing weights (component order: {order_name(module)})",
        "x" if one_x else "reference row",
    )
    if module.family.n_components > 1:
        say(f"{label}components: {components.describe()}")

    alive = [m for m in fit.members if m.alive and np.isfinite(m.objective)]
    if len(alive) >= 2:
        restarts = restart_report(fit.members, fit.best.index, x_ref)
        metrics |= restarts.metrics
        restarts.restarts.to_csv(folder / "restarts_alignment.csv", index=False)
        restarts.pairs.to_csv(folder / "restart_pairs.csv", index=False)
        figures.restart_agreement(restarts.pairs, folder / "restarts_agreement.png", title)
        m = restarts.metrics
        say(
            f"{label}restarts: {m['diagnostics/restarts_permuted_fraction']:.0%} permuted "
            f"relative to the best; weight distance {m['diagnostics/restarts_param_distance_raw']:.3g}"
            f" raw, {m['diagnostics/restarts_param_distance_aligned']:.3g} aligned; predictive "
            f"symmetric KL {m['diagnostics/restarts_predictive_skl']:.3g} nats"
        )

    metrics |= curvature_diagnostics(fit, x_train, inference, folder, label)
    if settings.im_test:
        metrics |= information_matrix_test(
            fit, x_train, y_train, settings, folder, seed, polish_tol, polish_max_iter, label
        )

    summary = {
        "notes": notes,
        "order": order_name(module),
        "n_components": module.family.n_components,
        "effective_components": components.effective,
        "negligible_components": components.negligible,
        "duplicate_component_pairs": [list(p) for p in components.duplicates],
        "reference_rows": int(x_ref.shape[0]),
    }
    if fit.ordering is not None:
        summary |= {
            "relabelled_restarts": fit.ordering.relabelled,
            "unstable_order_restarts": fit.ordering.unstable,
            "relabel_objective_change": fit.ordering.objective_change,
        }
    (folder / "identifiability.json").write_text(json.dumps(summary, indent=2) + "\n")
    return metrics


def order_name(module) -> str:
    if module.family.n_components == 1:
        return "one component"
    return "canonical (decreasing mean weight)" if module.ordered else "as fitted (none)"


def curvature_diagnostics(fit, x_train, inference, folder: Path, label: str = "") -> dict:
    """lambda = 0: A's null eigenvalues against the null dimension the architecture and the
    fitted weights predict (``symmetries.py``); the excess is redundancy. lambda > 0: the
    effective number of parameters against the weight count."""
    if inference is None or "inference/n_params" not in inference.metrics:
        return {}
    m = inference.metrics
    n_params = m["inference/n_params"]
    if fit.penalty > 0:
        if "inference/effective_params" not in m:
            return {}
        fraction = m["inference/effective_params"] / n_params
        return {"diagnostics/effective_params_fraction": fraction}
    if "inference/n_null_eigs" not in m or n_params != sum(
        p.numel() for p in fit.module.net.parameters()
    ):  # the spectrum is of A over every weight only
        return {}
    prediction = predicted_null_dimension(fit.module, x_train)
    measured = m["inference/n_null_eigs"]
    pd.DataFrame(prediction.breakdown, columns=["reason", "where", "count"]).to_csv(
        folder / "null_space.csv", index=False
    )
    say(
        f"{label}null space of A: {measured:.0f} null eigenvalue(s) measured, "
        f"{prediction.total} predicted by the architecture and weights ({prediction.describe()})"
    )
    if measured > prediction.total:
        warn(
            f"{label}A has {measured - prediction.total:.0f} more null direction(s) than the "
            "network's symmetries and dead parts explain: redundancy in the fit (weakly "
            "identified weights); consider a penalty (train.penalty > 0) or a smaller model"
        )
    return {
        "diagnostics/null_predicted": float(prediction.total),
        "diagnostics/null_measured": float(measured),
        "diagnostics/null_excess": float(measured - prediction.total),
    }


def information_matrix_test(
    fit,
    x,
    y,
    settings: DiagnosticSettings,
    folder: Path,
    seed: int,
    tol: float,
    max_iter: int = 5000,
    label: str = "",
) -> dict:
    """White's test on ``diagnostics.im_test.subset``: the chi-square p-value and, with
    ``diagnostics.im_test.bootstrap`` = B > 0, the parametric-bootstrap p-value
    (1 + #{T_b >= T}) / (1 + B') over the B' refits that converged."""
    module = fit.module
    n_params = sum(p.numel() for p in module.net.parameters())
    if n_params > settings.im_max_params:
        say(
            f"{label}information-matrix test skipped: {n_params} weights > "
            f"diagnostics.im_test.max_params {settings.im_max_params} (it forms A, P x P)"
        )
        return {}
    observed = im_test(
        module,
        x,
        y,
        penalty=fit.penalty,
        subset=settings.im_subset,
        rtol=settings.im_rtol,
        debias=True,
    )
    metrics = {
        "diagnostics/im_test_stat": observed.statistic,
        "diagnostics/im_test_df": float(observed.df),
        "diagnostics/im_test_pvalue": observed.pvalue,
    }
    line = (
        f"{label}information-matrix test ({settings.im_subset}): T = {observed.statistic:.2f} "
        f"on {observed.df} df, chi-square p = {observed.pvalue:.3g}"
    )
    if settings.im_bootstrap > 0:
        if len(fit.members) < CALIBRATED_RESTARTS:
            warn(
                f"{label}information-matrix bootstrap with {len(fit.members)} restart(s): its "
                f"p-value over-rejects when the fit can stop in a worse optimum (size 0.18 at "
                f"1 restart, 0.03 at 5; docs/identifiability.md); use train.restarts >= "
                f"{CALIBRATED_RESTARTS}"
            )
        targets = simulate_targets(module, x, settings.im_bootstrap, seed)
        refits = refit_on_targets(
            module,
            x,
            targets,
            fit.penalty,
            tol=tol,
            max_iter=max_iter,
            label=label,
            scale_penalty=fit.scale_penalty,
        )
        rows = []
        for b, (refit, converged) in enumerate(zip(refits.modules, refits.converged, strict=True)):
            stat = (
                im_test(
                    refit,
                    x,
                    targets[b],
                    penalty=fit.penalty,
                    subset=settings.im_subset,
                    rtol=settings.im_rtol,
                    debias=True,
                )
                if bool(converged)
                else None
            )
            rows.append(
                {
                    "replicate": b,
                    "converged": bool(converged),
                    "grad_norm": float(refits.grad_max[b]),
                    "statistic": np.nan if stat is None else stat.statistic,
                    "df": np.nan if stat is None else stat.df,
                }
            )
        table = pd.DataFrame(rows)
        table.to_csv(folder / "im_test_bootstrap.csv", index=False)
        used = table.statistic.dropna()
        pvalue = (1 + int((used >= observed.statistic).sum())) / (1 + len(used))
        metrics["diagnostics/im_test_bootstrap_pvalue"] = pvalue
        metrics["diagnostics/im_test_bootstrap_refits"] = float(len(used))
        line += f", parametric bootstrap p = {pvalue:.3g} ({len(used)} refits)"
        if len(used) < len(table):
            warn(
                f"{label}information-matrix bootstrap: {len(table) - len(used)} of {len(table)} "
                f"refits did not converge to max|grad| {tol:g} and were left out"
            )
    say(line)
    return metrics
