"""The diagnostics step of a run: what is identified, written under ``diagnostics/``.

Metrics ``diagnostics/*`` and, in the run's ``diagnostics/`` artifact folder:
``identifiability.json`` (notes, the order, effective K), ``components.csv`` and
``component_weights.png``; with R >= 2 restarts ``restarts_alignment.csv``,
``restart_pairs.csv`` and ``restarts_agreement.png``. Nothing here branches on the family.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mdnlab.diagnostics import figures
from mdnlab.diagnostics.components import component_report
from mdnlab.diagnostics.labels import reference_rows
from mdnlab.diagnostics.restarts import restart_report
from mdnlab.progress import say, warn


def diagnose(fit, x_train: torch.Tensor, folder: Path, title: str, label: str = "") -> dict:
    """``fit``: the pipeline's Fit (best module, members, ordering report)."""
    folder.mkdir(parents=True, exist_ok=True)
    module = fit.module
    x_ref = reference_rows(x_train)
    metrics: dict[str, float] = {}
    notes = list(module.family.identifiability_notes())
    for note in notes:
        warn(f"{label}identifiability: {note}")

    components = component_report(module, x_ref)
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
