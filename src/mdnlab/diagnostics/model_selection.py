"""Model selection over the number of components K, on a multirun sweep's parent run.

When a sweep's children (tag ``mlflow.parentRunId``) differ in ``model.n_components``, the
sweep callback (``mdnlab.sweep``) calls :func:`report_sweep` in the launching process, which
writes on the parent run

- ``diagnostics/model_selection.csv``: one row per finished child: ``n_components``, every
  other param that varies across the children (a K x seed sweep has ``seed``), ``run_id``,
  ``n_train``, ``train_nll``, ``val_nll`` (nats per sample), ``n_params``,
  ``effective_params``, ``tic_trace``, ``log_evidence``, the criteria

      aic = 2 n NLL + 2 P,   bic = 2 n NLL + P log n,   tic = 2 n NLL + 2 tr(A_lambda^-1 B)

  (n = training rows, NLL = ``train/nll`` at the estimate, P = the weight count,
  tr = ``inference/tic_trace``), and per criterion a boolean ``<criterion>_pick`` marking the
  minimiser (the maximiser for ``log_evidence``, the minimiser of ``val_nll``) within each
  group of the other varying params (per seed, say);
- ``diagnostics/model_selection.png``: the criteria per sample (criterion / 2n; the evidence
  as -log evidence / n), and the validation NLL, against K;
- metrics ``diagnostics/model_selection_k_<criterion>``: the K each criterion picks (the modal
  pick, ties to the smaller K, when there are several groups; the CSV has them all).

Where the numbers come from (``child_values``): ``n_train`` is ``inference/n_rows``, else
lambda |theta|^2 / (2 ``train/penalty_term``) where lambda > 0, else NaN (AIC, BIC and TIC
NaN). P is ``inference/n_params`` when the child's ``inference.params`` is ``all``, else (the
head only, or inference off) the checkpoint's weight count. ``tic_trace`` is as logged: over
the head only under ``inference.params=head``, absent (NaN) on the matrix-free path or with
inference off, and ``log_evidence`` (``train/log_evidence``) only under
``train.penalty_select=evidence``. A criterion that is NaN in a row never picks that row.

Children that did not finish (FAILED, KILLED, still RUNNING) are listed and skipped; a sweep
whose children all have one K writes nothing; and :func:`report_sweep` never raises (a
failure is a warning), so the sweep's own end is never spoilt by its diagnostics.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mdnlab.progress import say, warn

K_PARAM = "model.n_components"
PARENT_TAG = "mlflow.parentRunId"
# criterion column -> "min" or "max": which extreme is the pick
CRITERIA = {"aic": "min", "bic": "min", "tic": "min", "log_evidence": "max", "val_nll": "min"}
# column -> the child's metric
METRICS = {
    "train_nll": "train/nll",
    "val_nll": "val/nll",
    "n_params": "inference/n_params",
    "effective_params": "inference/effective_params",
    "tic_trace": "inference/tic_trace",
    "log_evidence": "train/log_evidence",
}
VALUE_COLUMNS = [
    "run_id",
    "n_train",
    "train_nll",
    "val_nll",
    "n_params",
    "effective_params",
    "tic_trace",
    "log_evidence",
]
CSV_PATH = "diagnostics/model_selection.csv"
FIGURE_PATH = "diagnostics/model_selection.png"
METRIC_PREFIX = "diagnostics/model_selection_k_"
# the figure: criterion -> (label, c): plotted as criterion / (c n); None: as it is
PER_SAMPLE = {
    "aic": ("AIC / 2n", 2.0),
    "bic": ("BIC / 2n", 2.0),
    "tic": ("TIC / 2n", 2.0),
    "log_evidence": ("-log evidence / n", -1.0),
    "val_nll": ("val NLL", None),
}


# --- pure functions on a frame of child-run values -------------------------------------------
def information_criteria(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``aic``, ``bic``, ``tic`` added from ``n_train``, ``train_nll``,
    ``n_params`` and ``tic_trace`` (NaN wherever an input is)."""
    out = frame.copy()
    n = out["n_train"].astype(float)
    fit = 2.0 * n * out["train_nll"].astype(float)
    p = out["n_params"].astype(float)
    out["aic"] = fit + 2.0 * p
    out["bic"] = fit + p * np.log(n)
    out["tic"] = fit + 2.0 * out["tic_trace"].astype(float)
    return out


def groups_of(frame: pd.DataFrame, group_columns: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(key, sub-frame) per group of the other varying params, in sorted order; one group (key
    ()) when there are none."""
    if not group_columns:
        return [((), frame)]
    return [
        (key if isinstance(key, tuple) else (key,), group)
        for key, group in frame.groupby(group_columns, sort=True, dropna=False)
    ]


def mark_picks(frame: pd.DataFrame, group_columns: list[str]) -> pd.DataFrame:
    """``frame`` with a boolean ``<criterion>_pick`` per criterion: the row (the K) of each
    group at the criterion's minimum (maximum for ``log_evidence``); ties go to the first row
    in the frame's order; a group whose criterion is NaN throughout, or absent, picks nothing."""
    out, work = frame.copy(), frame.reset_index(drop=True)  # work's index: row positions
    for criterion, extreme in CRITERIA.items():
        pick = np.zeros(len(out), dtype=bool)
        if criterion in work:
            for _, group in groups_of(work, group_columns):
                values = group[criterion].astype(float).to_numpy()
                if np.isfinite(values).any():
                    best = np.nanargmin(values) if extreme == "min" else np.nanargmax(values)
                    pick[group.index[best]] = True
        out[f"{criterion}_pick"] = pick
    return out


def picks_per_group(frame: pd.DataFrame, group_columns: list[str]) -> pd.DataFrame:
    """One row per group: its keys and the K each criterion picks (NaN: no pick), from the
    ``<criterion>_pick`` columns of :func:`mark_picks`."""
    rows = []
    for key, group in groups_of(frame, group_columns):
        row = dict(zip(group_columns, key, strict=True))
        for criterion in CRITERIA:
            chosen = group.loc[group[f"{criterion}_pick"], "n_components"]
            row[criterion] = float(chosen.iloc[0]) if len(chosen) else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=[*group_columns, *CRITERIA])


def chosen_k(frame: pd.DataFrame, group_columns: list[str]) -> dict[str, int]:
    """The K each criterion picks: the single group's pick, else the modal pick over the groups
    (ties to the smaller K); criteria that pick nothing anywhere are left out. A group with one
    K compared nothing (an Optuna search makes one per trial) and has no vote."""
    per_group = picks_per_group(frame, group_columns)
    compares = [group["n_components"].nunique() > 1 for _, group in groups_of(frame, group_columns)]
    per_group = per_group[np.asarray(compares, dtype=bool)]
    out = {}
    for criterion in CRITERIA:
        values = per_group[criterion].dropna()
        if len(values):
            counts = values.value_counts()
            out[criterion] = int(min(counts.index[counts == counts.max()]))
    return out


def selection_table(values: pd.DataFrame, group_columns: list[str]) -> pd.DataFrame:
    """The CSV: ``values`` (one row per child: ``n_components``, the group columns and
    ``VALUE_COLUMNS``) with the criteria and picks, sorted by group then K."""
    frame = values.sort_values([*group_columns, "n_components"], kind="stable")
    frame = mark_picks(information_criteria(frame.reset_index(drop=True)), group_columns)
    columns = ["n_components", *group_columns, *VALUE_COLUMNS, "aic", "bic", "tic"]
    return frame[columns + [f"{c}_pick" for c in CRITERIA]]


def varying_params(params: list[dict[str, str]], exclude: tuple[str, ...] = (K_PARAM,)) -> list:
    """The param names whose values differ across the children (missing counts as a value)."""
    names = sorted(set().union(*params)) if params else []
    return [
        name for name in names if name not in exclude and len({p.get(name) for p in params}) > 1
    ]


def pick_summary(table: pd.DataFrame, group_columns: list[str]) -> str:
    """A short text table: the K each criterion picks, per group."""
    per_group = picks_per_group(table, group_columns)
    shown = per_group.copy()
    for criterion in CRITERIA:
        shown[criterion] = [
            "-" if pd.isna(v) else str(int(v)) for v in per_group[criterion].to_numpy()
        ]
    if not group_columns:
        shown.insert(0, "group", "all")
    return shown.to_string(index=False)


def _numeric(column: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(column)
    except (ValueError, TypeError):
        return column


# --- from MLflow -----------------------------------------------------------------------------
@dataclass
class ChildValues:
    values: pd.DataFrame  # one row per finished child: n_components, group columns, VALUE_COLUMNS
    group_columns: list[str]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (run id, name, status)

    @property
    def varies_k(self) -> bool:
        return self.values["n_components"].nunique() > 1


def children(client, parent_run_id: str) -> list:
    """Every child run of the parent (in the parent's experiment), through all result pages."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    found, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        found += list(page)
        token = page.token
        if not token:
            return found


def training_rows(metrics: dict[str, float]) -> float:
    """n: ``inference/n_rows``, else lambda |theta|^2 / (2 penalty term) (lambda > 0), else NaN."""
    if "inference/n_rows" in metrics:
        return float(metrics["inference/n_rows"])
    penalty, term = metrics.get("train/penalty", 0.0), metrics.get("train/penalty_term", 0.0)
    norm = metrics.get("train/weight_norm")
    if penalty > 0 and term > 0 and norm is not None:
        return float(round(penalty * norm**2 / (2.0 * term)))
    return float("nan")


def checkpoint_weights(client, run_id: str) -> float:
    """The network's weight count from the child's checkpoint (NaN when it cannot be read)."""
    import torch

    try:
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(run_id, "model/model.ckpt", folder)
            state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception:  # noqa: BLE001 - a missing checkpoint leaves P unknown, not the sweep broken
        return float("nan")
    return float(sum(v.numel() for k, v in state.items() if k.startswith("net.")))


def child_values(client, parent_run_id: str) -> ChildValues:
    """The values the selection needs from every finished child of the parent run."""
    finished, skipped = [], []
    for run in children(client, parent_run_id):
        info = run.info
        if info.status != "FINISHED" or K_PARAM not in run.data.params:
            status = info.status if info.status != "FINISHED" else f"no {K_PARAM} param"
            skipped.append((info.run_id, info.run_name, status))
        else:
            finished.append(run)
    params = [dict(r.data.params) for r in finished]
    group_columns = varying_params(params)
    rows = []
    for run, param in zip(finished, params, strict=True):
        metrics = run.data.metrics
        row = {"n_components": int(param[K_PARAM])}
        row |= {name: param.get(name) for name in group_columns}
        row["run_id"] = run.info.run_id
        row["n_train"] = training_rows(metrics)
        row |= {column: float(metrics.get(name, np.nan)) for column, name in METRICS.items()}
        if param.get("inference.params", "all") != "all" or np.isnan(row["n_params"]):
            row["n_params"] = checkpoint_weights(client, run.info.run_id)
        rows.append(row)
    values = pd.DataFrame(rows, columns=["n_components", *group_columns, *VALUE_COLUMNS])
    for name in group_columns:
        values[name] = _numeric(values[name])
    return ChildValues(values, group_columns, skipped)


def figure(table: pd.DataFrame, group_columns: list[str], path: Path, title: str = "") -> None:
    """``diagnostics/model_selection.png`` from the CSV's table."""
    from mdnlab import plots

    ks = np.sort(table["n_components"].unique())
    groups = groups_of(table, group_columns)
    curves, picks = {}, {}
    for criterion, (label, divisor) in PER_SAMPLE.items():
        rows = np.full((len(groups), ks.size), np.nan)
        chosen = np.full(len(groups), np.nan)
        for g, (_, group) in enumerate(groups):
            values = group[criterion].astype(float).to_numpy()
            if divisor is not None:
                values = values / (divisor * group["n_train"].astype(float).to_numpy())
            rows[g, np.searchsorted(ks, group["n_components"].to_numpy())] = values
            hit = group.loc[group[f"{criterion}_pick"], "n_components"]
            chosen[g] = hit.iloc[0] if len(hit) else np.nan
        if np.isfinite(rows).any():
            curves[label], picks[label] = rows, chosen
    plots.criteria_against_k(ks, curves, picks, path, title)


def write_model_selection(client, parent_run_id: str) -> pd.DataFrame | None:
    """Writes the CSV, the figure and the pick metrics on the parent run, says which K each
    criterion picks; returns the table (None when the children do not vary K)."""
    found = child_values(client, parent_run_id)
    for run_id, name, status in found.skipped:
        warn(f"model selection: child run {name} ({run_id}) skipped: {status}")
    if found.skipped:
        client.set_tag(
            parent_run_id,
            "diagnostics.model_selection.skipped",
            ", ".join(f"{run_id} ({status})" for run_id, _, status in found.skipped),
        )
    if found.values.empty or not found.varies_k:
        return None
    table = selection_table(found.values, found.group_columns)
    parent_name = client.get_run(parent_run_id).info.run_name
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "diagnostics"
        local.mkdir()
        table.to_csv(local / Path(CSV_PATH).name, index=False)
        figure(table, found.group_columns, local / Path(FIGURE_PATH).name, parent_name)
        client.log_artifacts(parent_run_id, str(local), artifact_path="diagnostics")
    chosen = chosen_k(table, found.group_columns)
    for criterion, k in chosen.items():
        client.log_metric(parent_run_id, f"{METRIC_PREFIX}{criterion}", float(k))
    by = f", per {', '.join(found.group_columns)}" if found.group_columns else ""
    say(
        f"model selection over K on {parent_name} ({len(table)} runs{by}): the K each "
        f"criterion picks\n{pick_summary(table, found.group_columns)}"
    )
    return table


def report_sweep(client, parent_run_id: str) -> pd.DataFrame | None:
    """:func:`write_model_selection`, with any failure a warning rather than an exception."""
    try:
        return write_model_selection(client, parent_run_id)
    except Exception as error:  # noqa: BLE001 - diagnostics must never break the sweep's end
        warn(f"model selection on the sweep's parent run {parent_run_id} failed: {error!r}")
        return None
