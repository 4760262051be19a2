"""Which figures a run draws: the shared ones, and those that suit each output family.

Figures are chosen here, by family name and data shape, so that neither the module nor the
families know about plotting (``training_curves.png`` is drawn by ``pipeline.write_artifacts``):

- with the dense inference step: ``hessian_spectrum.png``, and for a 1-d x
  ``confidence_bands.png`` (95% delta-method bands of the headline quantities);
- gaussian: ``prediction_bands.png`` (mean +- 2 sd), ``conditional_density.png`` (1-d x, 1-d y);
- categorical: ``class_probabilities.png`` (predicted probabilities against the first x column
  with observed and mean predicted class shares in bins of it) and ``calibration.png``;
- wishart: ``realized_vs_predicted.png`` (realized against predicted variances and
  correlations, along x or, for multi-d x, over rows in data order, i.e. time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mdnlab import plots
from mdnlab.data.splits import Splits
from mdnlab.data.table import Table


def draw(
    family: str,
    module,
    table: Table,
    splits: Splits,
    out: Path,
    title: str,
    inference=None,
    eig_rtol: float = 1e-8,
    metrics: dict | None = None,
) -> None:
    x_train, y_train = table.x[splits.train], table.y[splits.train]
    metrics = metrics or {}
    if inference is not None and len(inference.eigenvalues):
        predicted = metrics.get("diagnostics/null_predicted")
        plots.eigen_spectrum(
            inference.eigenvalues,
            eig_rtol,
            out / "hessian_spectrum.png",
            title,
            predicted_null=None if predicted is None else int(predicted),
            effective_params=metrics.get("inference/effective_params")
            if metrics.get("train/penalty", 0) > 0
            else None,
        )
    if inference is not None and inference.grid is not None:
        panels, observed = band_panels(family, table, x_train, y_train)
        plots.confidence_bands(
            inference.grid,
            panels,
            table.x_names[0],
            out / "confidence_bands.png",
            f"{title}: 95% delta-method bands",
            observed,
        )
    eval_rows = splits.test if len(splits.test) else splits.train
    split = "test" if len(splits.test) else "train"
    with torch.no_grad():
        predicted = {
            k: v.numpy() for k, v in module.quantities(torch.as_tensor(table.x[eval_rows])).items()
        }
    x_eval, y_eval = table.x[eval_rows], table.y[eval_rows]
    one_x = table.x.shape[1] == 1

    if family == "gaussian":
        plots.prediction_bands(
            predicted,
            y_eval,
            table.y_names,
            out / "prediction_bands.png",
            f"{title}: {split} split",
            **({"along": x_eval[:, 0], "x_label": table.x_names[0]} if one_x else {}),
        )
        if one_x and table.y.shape[1] == 1:
            plots.conditional_density(
                module,
                x_train,
                y_train,
                out / "conditional_density.png",
                table.x_names[0],
                table.y_names[0],
                title,
            )
    elif family == "categorical":
        labels = class_labels(table, predicted)
        plots.class_probabilities(
            x_eval[:, 0],
            predicted,
            y_eval.astype(int),
            labels,
            table.y_names,
            out / "class_probabilities.png",
            table.x_names[0],
            f"{title}: {split} split",
        )
        plots.calibration(
            predicted,
            y_eval.astype(int),
            table.y_names,
            out / "calibration.png",
            f"{title}: {split} split",
        )
    elif family == "wishart":
        p = table.y.shape[1]
        with torch.no_grad():
            everything = module.quantities(torch.as_tensor(table.x))
        mean = np.zeros((table.n_rows, p, p))
        for i in range(p):
            for j in range(i + 1):
                mean[:, i, j] = mean[:, j, i] = everything[f"mean[{i},{j}]"].numpy()
        held_out = np.zeros(table.n_rows, dtype=bool)
        held_out[splits.test] = True
        plots.realized_vs_predicted(
            table.x[:, 0] if one_x else np.arange(table.n_rows, dtype=float),
            table.y,
            mean,
            matrix_names(table.y_names, p),
            out / "realized_vs_predicted.png",
            table.x_names[0] if one_x else "row (data order)",
            f"{title}: all rows",
            highlight=None if one_x else held_out,
        )


def band_panels(family: str, table: Table, x: np.ndarray, y: np.ndarray):
    """(quantity, label) panels for the band plot and the data drawn behind each."""
    if family == "gaussian":
        panels = [(f"mean[{j}]", f"mean of {name}") for j, name in enumerate(table.y_names)]
        observed = {f"mean[{j}]": (x[:, 0], y[:, j], "training data") for j in range(y.shape[1])}
    elif family == "categorical":
        panels, observed = [], {}
        for d, name in enumerate(table.y_names):
            levels = table.y_levels.get(name)
            for c in range(int(y[:, d].max()) + 1):
                label = levels[c] if levels else str(c)
                panels.append((f"prob[{d},{c}]", f"P({name}={label})"))
                centres, shares = plots.binned_shares(x[:, 0], y[:, d] == c)
                observed[f"prob[{d},{c}]"] = (centres, shares, "observed share (bins of x)")
    else:  # wishart: the entries of E[Y|x]
        p = y.shape[1]
        names = matrix_names(table.y_names, p)
        panels, observed = [], {}
        for i in range(p):
            for j in range(i + 1):
                key = f"mean[{i},{j}]"
                panels.append((key, f"E[Y] {names[i]},{names[j]}"))
                observed[key] = (x[:, 0], y[:, i, j], "training data")
    return panels, observed


def class_labels(table: Table, predicted: dict[str, np.ndarray]) -> list[list[str]]:
    labels = []
    for d, name in enumerate(table.y_names):
        n_classes = sum(1 for k in predicted if k.startswith(f"prob[{d},"))
        levels = table.y_levels.get(name)
        labels.append(list(levels) if levels else [str(c) for c in range(n_classes)])
    return labels


def matrix_names(y_names: list[str], p: int) -> list[str]:
    """Names of the matrix's rows: from diagonal columns named like ``DAX_DAX``, else 0..p-1."""
    triangle = [(i, j) for i in range(p) for j in range(i + 1)]
    if len(y_names) == len(triangle):
        diagonal = [y_names[triangle.index((i, i))] for i in range(p)]
        parts = [n.split("_") for n in diagonal]
        if all(len(q) == 2 and q[0] == q[1] for q in parts):
            return [q[0] for q in parts]
    return [str(i) for i in range(p)]
