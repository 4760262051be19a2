"""A run's description for the MLflow UI (tag ``mlflow.note.content``, markdown): what was
fitted and how it went, in a few lines a person reads before opening the metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

NOTE_TAG = "mlflow.note.content"
FAMILY_NAMES = {"gaussian": "Gaussian", "categorical": "categorical", "wishart": "Wishart"}


def describe_run(
    cfg,
    metrics: Mapping[str, float],
    n_weights: int,
    split_sizes: Mapping[str, int],
    converged: bool | None,
    polish_tol: float,
    warnings: Sequence[str] = (),
) -> str:
    model = cfg.model
    family = FAMILY_NAMES.get(str(model.family), str(model.family))
    hidden = list(model.get("hidden_sizes") or [])
    network = f"hidden {hidden} ({model.get('activation', 'tanh')})" if hidden else "linear head"
    penalty = metrics.get("train/penalty", float(cfg.train.get("penalty", 0.0)))
    penalty_text = "no penalty (plain MLE)" if penalty == 0 else f"ridge penalty {penalty:g}"
    sizes = ", ".join(f"{k} {v}" for k, v in split_sizes.items() if v)
    lines = [
        f"**{cfg.data.name}**: {family} MDN, K = {model.n_components}, {network}, "
        f"{n_weights} weights, {penalty_text}, {cfg.train.get('restarts', 1)} restart(s); "
        f"rows: {sizes}.",
        "",
        f"- Fit: {_fit_line(metrics, converged, polish_tol)}",
    ]
    scores = _score_line(metrics)
    if scores:
        lines.append(f"- Held out: {scores}")
    if "test/kl_to_truth" in metrics:
        kl, se = metrics["test/kl_to_truth"], metrics.get("test/kl_to_truth_se", float("nan"))
        lines.append(f"- KL(true || fitted) {kl:.4f} +- {se:.4f} (known truth)")
    lines.extend(f"- Warning: {w}" for w in warnings)
    if not warnings:
        lines.append("- No warnings.")
    return "\n".join(lines) + "\n"


def _fit_line(metrics, converged, polish_tol) -> str:
    epochs = metrics.get("train/epochs")
    text = f"Adam {epochs:.0f} epochs" if epochs is not None else "Adam"
    iterations = metrics.get("train/polish_iterations")
    grad = metrics.get("train/grad_norm")
    if iterations is not None:
        text += f", then {iterations:.0f} L-BFGS iterations"
    if converged is not None and grad is not None:
        state = "converged" if converged else "NOT converged"
        relation = "<=" if converged else ">"
        text += f": {state} (max|grad| {grad:.1e} {relation} {polish_tol:g})"
    if "train/nll" in metrics:
        text += f"; train NLL {metrics['train/nll']:.4f}"
    return text


def _score_line(metrics) -> str:
    parts = []
    for split in ("val", "test"):
        if f"{split}/nll" in metrics:
            parts.append(f"{split} NLL {metrics[f'{split}/nll']:.4f}")
    if "test/coverage_90" in metrics:
        parts.append(f"90% predictive intervals cover {metrics['test/coverage_90']:.2f}")
    if "test/pit_ks" in metrics:
        parts.append(f"PIT KS {metrics['test/pit_ks']:.3f}")
    return "; ".join(parts)
