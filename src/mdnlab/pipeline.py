"""One run: data -> fit -> polish -> evaluate -> MLflow run (+ DVC metrics and plots files).

``run(cfg)`` is what ``src/train.py`` calls; it returns the run's metrics as floats. Every
check on the data and the config happens before the MLflow run is created, so bad input
leaves no run behind; a failure after that ends the run as FAILED.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from threadpoolctl import threadpool_limits

from mdnlab import plots, run_figures, tracking
from mdnlab.config_checks import check_run_config
from mdnlab.cores import available_cores
from mdnlab.data.splits import Splits, split_rows
from mdnlab.data.table import Table, read_table
from mdnlab.data.uci import read_uci, uci_dataset, uci_splits
from mdnlab.description import NOTE_TAG, describe_run
from mdnlab.diagnostics.calibration import calibrate
from mdnlab.diagnostics.kl import kl_estimate, load_eval_sample, model_log_prob
from mdnlab.diagnostics.labels import identified_flags
from mdnlab.diagnostics.report import DiagnosticSettings, diagnose
from mdnlab.distributed import is_worker_process
from mdnlab.errors import ConfigError, DataError, TrainingError
from mdnlab.estimation.adam import TrainerSettings
from mdnlab.estimation.checkpoints import Checkpointing
from mdnlab.estimation.fit import (
    FitData,
    MemberResult,
    PolishSettings,
    best_member,
    fit_members,
    member_seeds,
    polish_members,
)
from mdnlab.estimation.objective import check_penalty
from mdnlab.estimation.ordering import OrderingReport, order_members
from mdnlab.estimation.scale_reference import set_residual_reference
from mdnlab.estimation.selection import select_penalty
from mdnlab.estimation.validation_path import PathChoice, PathSettings, select_by_validation
from mdnlab.families import family_class
from mdnlab.fingerprint import FINGERPRINT_TAG, finished_run, run_fingerprint
from mdnlab.fitted.pyfunc import log_pyfunc
from mdnlab.inference.functional import FlatModel
from mdnlab.inference.step import InferenceResult, run_inference, run_inference_matrix_free
from mdnlab.interrupts import stopped_by_user
from mdnlab.module import MDNModule
from mdnlab.predictions import DEFAULT_POINTS, predictions_frame, read_points
from mdnlab.progress import recorded_warnings, say, warn
from mdnlab.resume import CHECKPOINT_TAG, reopen_run
from mdnlab.sweep import active_sweep, experiment_name

SPLITS = ("train", "val", "test")


@dataclass
class SplitTensors:
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]

    @classmethod
    def from_table(cls, table: Table, splits: Splits) -> SplitTensors:
        def take(values, rows):
            return torch.as_tensor(values[rows], dtype=torch.float64)

        parts = dict(zip(SPLITS, (splits.train, splits.val, splits.test), strict=True))
        return cls(
            x={k: take(table.x, rows) for k, rows in parts.items()},
            y={k: take(table.y, rows) for k, rows in parts.items()},
        )

    def size(self, split: str) -> int:
        return self.x[split].shape[0]


def run(cfg: DictConfig, out_dir: Path | None = None) -> dict[str, float]:
    """One run; its local files go to ``out_dir`` (default: Hydra's run folder, or a new
    temporary folder outside Hydra)."""
    with recorded_warnings() as warnings:
        return _run(cfg, warnings, out_dir)


def _run(cfg: DictConfig, warnings: list[str], out_dir: Path | None = None) -> dict[str, float]:
    started = time.perf_counter()
    check_run_config(cfg)
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)

    estimation = Estimation.from_config(cfg)
    diagnostics = DiagnosticSettings.from_config(cfg.get("diagnostics"))
    table, splits = load_data(cfg)
    data = SplitTensors.from_table(table, splits)
    module = build_module(cfg, table, data)  # to check the model and count its weights
    label = f"[{run_name(cfg)}] "
    work = data.size("train") * n_weights(module) * estimation.restarts
    threads = configure_threads(cfg.get("threads", "auto"), work)
    if is_worker_process():
        estimate(cfg, table, data, estimation, f"[{run_name(cfg)} ddp worker] ")
        return {}
    x_points = prediction_points(cfg, table, data)
    if data.size("train") < n_weights(module):
        warn(
            f"{label}{data.size('train')} training rows for {n_weights(module)} weights: the "
            "maximum-likelihood estimate is far from identified; consider a smaller model"
        )
    say(
        f"{label}{table.source}: {table.n_rows} rows -> train {data.size('train')}, "
        f"val {data.size('val')}, test {data.size('test')}; {n_weights(module)} weights; "
        f"penalty {estimation.penalty:g}; {estimation.restarts} restart(s); {threads} thread(s)"
    )

    out_dir = out_dir or output_dir()
    artifacts = out_dir / "artifacts"
    if artifacts.exists():
        shutil.rmtree(artifacts)
    sweep = active_sweep()
    # A sweep's jobs log where its parent is, whatever their own host's environment says.
    uri = sweep.tracking_uri if sweep is not None else None
    uri = uri or tracking.resolve_tracking_uri(cfg.logger.get("tracking_uri"))
    client, experiment_id = tracking.prepare_experiment(uri, experiment_name(cfg))
    tags = run_tags(cfg, table)
    tags[FINGERPRINT_TAG] = run_fingerprint(cfg, tags["data_md5"])
    if sweep is not None and not cfg.get("rerun", False):
        done = finished_run(client, experiment_id, tags[FINGERPRINT_TAG])
        if done is not None:
            sweep.adopt(client, experiment_id, done)
            say(
                f"{label}skipped: MLflow run {done.info.run_id} ({done.info.run_name}) finished "
                "with this config and data; rerun=true trains it again"
            )
            return {k: float(v) for k, v in done.data.metrics.items()}
    every_s = float(cfg.trainer.get("checkpoint_every_s", 60.0))
    resuming = cfg.get("resume") is not None
    if resuming:
        log, folder = reopen_run(client, str(cfg.resume), tags[FINGERPRINT_TAG], experiment_id)
        checkpoints = Checkpointing(folder, every_s, resume=True)
        say(f"{label}resuming MLflow run {log.run_id} from {folder}")
    else:
        parent = sweep.parent_run(client, experiment_id) if sweep is not None else None
        checkpoints = Checkpointing((out_dir / "checkpoints").resolve(), every_s)
        tags[CHECKPOINT_TAG] = str(checkpoints.folder)
        log = tracking.RunLog.start(client, experiment_id, run_name(cfg), tags, parent)
    say(
        f"{label}MLflow run {log.run_id} in experiment {experiment_name(cfg)!r} ({client.tracking_uri})"
    )
    try:
        if not resuming:
            log.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
            log.log_dataset(
                str(cfg.data.name),
                str(cfg.data.path),
                tags["data_md5"],
                {split: data.size(split) for split in SPLITS},
                dvc_md5=tags.get("data_dvc_md5"),
            )
        metrics, fit = train_and_evaluate(
            cfg, table, data, estimation, artifacts, label, checkpoints
        )
        module, history = fit.module, fit.history
        log.set_tags(
            {"restarts.best": str(fit.best.index), "restarts.count": str(len(fit.members))}
        )
        inference = infer(cfg, module, data, x_points, label, fit.penalty, fit.scale_penalty)
        if inference is not None:
            metrics.update(inference.metrics)
            log.set_tags({"inference.path": inference.path})
        if diagnostics.enabled:
            metrics |= diagnose(
                fit,
                data.x["train"],
                data.y["train"],
                inference,
                diagnostics,
                artifacts / "diagnostics",
                run_name(cfg),
                label,
                seed=int(cfg.seed),
                polish_tol=estimation.polish.tol,
                polish_max_iter=estimation.polish.max_iter,
            )
        metrics["run/seconds"] = time.perf_counter() - started
        write_artifacts(
            cfg,
            module,
            table,
            splits,
            artifacts,
            history,
            metrics,
            x_points,
            inference,
            diagnostics.identified_z,
        )
        log.log_metrics(metrics)
        for name, values in {**history, **restart_curves(fit)}.items():
            log.log_curve(name, values)
        log.log_artifacts(artifacts)
        if cfg.logger.get("log_model", True):
            log_pyfunc(client.tracking_uri, log.run_id, artifacts, data.x["train"].numpy())
        write_dvc_outputs(cfg, metrics, history, artifacts)
        log.set_tags(
            {
                NOTE_TAG: describe_run(
                    cfg,
                    metrics,
                    n_weights(module),
                    {split: data.size(split) for split in SPLITS},
                    fit.best.converged if estimation.polish.enabled else None,
                    estimation.polish.tol,
                    [w.removeprefix(label) for w in warnings],
                )
            }
        )
    except BaseException as err:
        log.finish("KILLED" if stopped_by_user(err) else "FAILED")
        raise
    log.finish("FINISHED")
    shutil.rmtree(checkpoints.folder, ignore_errors=True)  # nothing left to resume
    summary = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("test/"))
    say(f"{label}done in {metrics['run/seconds']:.1f}s  {summary}")
    return metrics


# --- set-up ----------------------------------------------------------------------------------
# Below this many (training rows x weights) a step is too small to share between threads:
# measured here, 2 threads made a 93-row step 35x slower than 1 beside another busy process.
SMALL_WORK = 5_000_000


def configure_threads(setting, work: int = 0) -> int:
    """Threads per process: 1 for small work, else this process's share of the cores."""
    cores = available_cores()
    if setting in (None, "auto"):
        threads = 1 if work < SMALL_WORK else max(1, cores // parallel_jobs(cores))
    else:
        threads = int(setting)
        if threads < 1:
            raise ConfigError(f"threads must be 'auto' or a positive integer, got {setting!r}")
    torch.set_num_threads(threads)
    # numpy/scipy's BLAS too: measured here, scipy's eigh with 2 BLAS threads beside a busy
    # process ran 6-80x slower than with 1.
    threadpool_limits(limits=threads)
    return threads


def parallel_jobs(cores: int) -> int:
    """How many jobs of this sweep run at once (joblib launcher's n_jobs), else 1."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode.name != "MULTIRUN" or "launcher" not in hydra_cfg:
        return 1
    target = str(hydra_cfg.launcher.get("_target_", ""))
    if target.endswith("submitit_launcher.LocalLauncher"):
        return cores  # submitit_local starts every job at once: one core's share each
    n_jobs = hydra_cfg.launcher.get("n_jobs")  # joblib; a SLURM job has its own allocation
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    return max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(tempfile.mkdtemp(prefix="mdnlab-run-"))


def load_data(cfg: DictConfig) -> tuple[Table, Splits]:
    d = cfg.data
    if d.get("split") == "uci":
        return load_uci(cfg)
    family = family_class(cfg.model.family)
    table = read_table(
        d.path,
        d.get("x_cols"),
        d.get("y_cols"),
        int(d.get("min_rows", 10)),
        text_y=family.text_targets,
    )
    table.y = family.prepare_targets(table.y, table.source, table.y_names)
    splits = split_rows(
        table.n_rows,
        float(d.val_fraction),
        float(d.test_fraction),
        d.get("split", "random"),
        int(cfg.seed),
        table.source,
        strata=family.strata(table.y),
    )
    return table, splits


def load_uci(cfg: DictConfig) -> tuple[Table, Splits]:
    """A UCI benchmark dataset (``data=uci``) and split ``data.uci_split`` of its protocol;
    ``data.path`` is set to the file read, so that the run records it, and ``data.uci_name``
    to the short name (so ``bostonHousing`` and ``boston`` name the same experiment)."""
    d = cfg.data
    spec = uci_dataset(str(d.uci_name))
    d.uci_name = spec.short
    table = read_uci(d.uci_dir, spec.folder, int(d.get("min_rows", 10)))
    d.path = table.source
    family = family_class(cfg.model.family)
    table.y = family.prepare_targets(table.y, table.source, table.y_names)
    splits = uci_splits(
        table.n_rows, d.uci_split, spec.splits, float(d.val_fraction), int(cfg.seed), table.source
    )
    return table, splits


def build_module(cfg: DictConfig, table: Table, data: SplitTensors) -> MDNModule:
    family = family_class(cfg.model.family)
    from_data = family.options_from_data(table.y, table.y_names, table.y_levels, table.source)
    user_set = {k: cfg.model.get(k) for k in from_data if cfg.model.get(k) is not None}
    family.check_options(table.y, table.y_names, table.y_levels, table.source, user_set)
    try:
        module = instantiate(
            cfg.model,
            _convert_="all",
            in_dim=table.x.shape[1],
            event_shape=list(table.y.shape[1:]),
            lr=float(cfg.trainer.lr),
            weight_decay=float(cfg.trainer.weight_decay),
            **{k: v for k, v in from_data.items() if k not in user_set},
        )
    except Exception as err:  # Hydra wraps constructor errors; surface ours unwrapped
        cause = err.__cause__ or err
        if isinstance(cause, (ConfigError, DataError)):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"model: {cause}") from None
        raise
    module.x_scaler.fit(data.x["train"])
    module.y_scaler.fit(data.y["train"])
    return module


def n_weights(module: MDNModule) -> int:
    return sum(p.numel() for p in module.net.parameters())


def run_name(cfg: DictConfig) -> str:
    if cfg.logger.get("run_name"):
        return str(cfg.logger.run_name)
    return f"{cfg.data.name}-{cfg.model.family}-K{cfg.model.n_components}-s{cfg.seed}"


def run_tags(cfg: DictConfig, table: Table) -> dict[str, str]:
    data_file = Path(cfg.data.path)
    tags = {
        "git_commit": tracking.git_commit(),
        "data_md5": tracking.file_md5(data_file),
        "family": str(cfg.model.family),
        "dataset": str(cfg.data.name),
        "mlflow.source.name": "src/train.py",
        **tracking.process_tags(),
    }
    if tags["git_commit"] != "unknown":
        tags["mlflow.source.git.commit"] = tags["git_commit"]
    dvc_hash = tracking.dvc_out_hash(data_file)
    if dvc_hash:
        tags["data_dvc_md5"] = dvc_hash
    return tags


# --- training and evaluation -----------------------------------------------------------------
POLISH_VAL_RISE = 0.02  # nats per sample: a rise in val/nll over the polish worth a warning
SCALE_FLOOR_MARGIN = 10.0  # a component scale within this factor of its floor: a warning
PENALTY_SELECTIONS = ("none", "evidence", "validation")
# residual: the Gaussian scale penalty is centred on the training rows' variance around the
# early-stopped network's mean; marginal: on the marginal variance (the identity, standardised)
SCALE_REFERENCES = ("residual", "marginal")


@dataclass(frozen=True)
class Estimation:
    """What ``train.*`` asks of the estimator, checked before any run is created."""

    penalty: float
    select: str
    restarts: int
    polish: PolishSettings
    scale_penalty: float = 0.0
    path: PathSettings = PathSettings()
    scale_reference: str = "residual"

    @property
    def needs_scale_reference(self) -> bool:
        """The residual reference is estimated only where a scale penalty is fitted."""
        some_penalty = self.scale_penalty > 0 or any(c > 0 for c in self.path.scale_penalties)
        return self.scale_reference == "residual" and some_penalty

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Estimation:
        t = cfg.train
        select = str(t.get("penalty_select", "none"))
        if select not in PENALTY_SELECTIONS:
            raise ConfigError(
                f"train.penalty_select={select!r}; expected one of {', '.join(PENALTY_SELECTIONS)}"
            )
        penalty = check_penalty(t.get("penalty", 0.0))
        if select == "evidence" and penalty == 0:
            raise ConfigError(
                "train.penalty_select=evidence needs a starting train.penalty > 0 (the evidence "
                "of an improper flat prior is not defined)"
            )
        scale_penalty = check_penalty(t.get("scale_penalty", 0.0), "train.scale_penalty")
        family = family_class(cfg.model.family)
        if scale_penalty and not family.supports_scale_penalty():
            raise ConfigError(
                f"train.scale_penalty={scale_penalty:g}: the {cfg.model.family} family has no "
                "scale penalty yet; use 0"
            )
        if scale_penalty and select == "evidence":
            raise ConfigError(
                "train.penalty_select=evidence with train.scale_penalty > 0: the evidence of the "
                "scale prior is not implemented; use train.scale_penalty=0 or penalty_select=none"
            )
        restarts = t.get("restarts", 1)
        if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
            raise ConfigError(f"train.restarts must be a positive integer, got {restarts!r}")
        polish = PolishSettings(
            bool(t.polish),
            float(t.polish_tol),
            int(t.polish_max_iter),
            int(t.get("newton_max_params", 300)),
        )
        path = PathSettings.from_config(t.get("penalty_path"))
        if select == "validation" and not polish.enabled:
            raise ConfigError(
                "train.penalty_select=validation walks a path of polished optima; it needs "
                "train.polish=true"
            )
        if select == "validation" and not float(cfg.data.get("val_fraction", 0.0)) > 0:
            raise ConfigError(
                "train.penalty_select=validation needs validation rows: data.val_fraction > 0"
            )
        reference = str(t.get("scale_reference", "residual"))
        if reference not in SCALE_REFERENCES:
            raise ConfigError(
                f"train.scale_reference={reference!r}; expected one of {', '.join(SCALE_REFERENCES)}"
            )
        return cls(penalty, select, restarts, polish, scale_penalty, path, reference)


@dataclass
class Fit:
    """The estimate a run reports (the best restart) and what the estimation step saw."""

    module: MDNModule
    metrics: dict[str, float]
    history: dict[str, list[float]]
    members: list[MemberResult]
    best: MemberResult
    penalty: float
    ordering: OrderingReport | None = None
    scale_penalty: float = 0.0
    path: PathChoice | None = None


def estimate(
    cfg,
    table: Table,
    data: SplitTensors,
    estimation: Estimation,
    label: str,
    checkpoints: Checkpointing | None = None,
) -> Fit | None:
    """R restarts trained as one batched network, polished, the penalty chosen by the evidence
    when asked; the best by the penalized training objective is the estimate (None in a DDP
    process other than rank 0, whose part is Adam)."""
    t = cfg.trainer

    def make_module(seed: int) -> MDNModule:
        torch.manual_seed(seed)
        return build_module(cfg, table, data)

    # With the residual reference, Adam runs without the scale penalty, the reference is read
    # off the early-stopped weights, and the polish (or the path) fits the penalized objective.
    residual = estimation.needs_scale_reference
    polish_in_fit = estimation.polish
    if estimation.select == "validation" or residual:
        polish_in_fit = replace(estimation.polish, enabled=False)

    fit_data = FitData(data.x["train"], data.y["train"], data.x["val"], data.y["val"])
    ensemble, members = fit_members(
        make_module,
        member_seeds(int(cfg.seed), estimation.restarts),
        fit_data,
        estimation.penalty,
        TrainerSettings(
            int(t.max_epochs),
            int(t.patience),
            float(t.get("min_delta", 0.0)),
            str(t.get("accelerator", "cpu")),
            str(t.get("strategy", "auto")),
            int(t.get("devices", 1)),
        ),
        float(t.lr),
        float(t.weight_decay),
        t.get("batch_size"),
        int(cfg.seed),
        polish_in_fit,  # the validation path polishes at its own penalties
        label,
        None if int(t.get("devices", 1)) > 1 else checkpoints,  # no resume under DDP
        0.0 if residual else estimation.scale_penalty,
    )
    if is_worker_process():
        return None  # a DDP process's share of Adam is done; rank 0 does the rest
    reference = None
    if residual:
        reference = set_residual_reference(ensemble, members, fit_data)
        ensemble.scale_penalty = estimation.scale_penalty
        if estimation.select != "validation" and estimation.polish.enabled:
            polish_members(ensemble, members, fit_data, estimation.polish, label)
    metrics: dict[str, float] = {}
    penalty, scale_penalty = estimation.penalty, estimation.scale_penalty
    if estimation.select == "evidence":
        choice = select_penalty(ensemble, members, fit_data, estimation.polish, label)
        penalty = choice.penalty
        metrics["train/log_evidence"] = choice.log_evidence
        metrics["train/effective_params"] = choice.effective_params
        metrics["train/evidence_iterations"] = float(choice.iterations)
    path = None
    if estimation.select == "validation":
        path = select_by_validation(
            ensemble, members, fit_data, estimation.polish, estimation.path, label
        )
        penalty, scale_penalty = path.penalty, path.scale_penalty
        metrics["train/penalty_path_points"] = float(len(path.points))
        chosen = path.points[path.index]
        if np.isfinite(chosen.effective_params):
            metrics["train/effective_params"] = chosen.effective_params
    ordering = None
    if members[0].module.ordered:
        ordering = order_members(ensemble, members, fit_data, estimation.polish, label)
    best = best_member(members)
    module = best.module
    metrics.update(
        {
            "train/epochs": float(best.epochs),
            "train/best_epoch": float(best.best_epoch),
            "train/polish_iterations": float(best.polish_iterations),
            "train/grad_norm": best.grad_max,
            "train/objective": best.objective,
            "train/penalty": penalty,
            "train/penalty_term": best.penalty_term,
            **(
                {
                    "train/scale_penalty": scale_penalty,
                    "train/scale_penalty_term": best.scale_term,
                    **(
                        {"train/scale_reference": float(reference.mean())}
                        if reference is not None and reference.numel()
                        else {}
                    ),
                }
                if scale_penalty
                else {}
            ),
            "train/weight_norm": float(
                torch.sqrt(sum(p.detach().pow(2).sum() for p in module.net.parameters()))
            ),
        }
    )
    if data.size("val"):
        metrics["val/nll_before_polish"] = best.val_nll_before_polish
    if estimation.polish.enabled and not best.converged:
        warn(
            f"{label}the polish stopped at max|grad| {best.grad_max:.2e} > "
            f"train.polish_tol {estimation.polish.tol:g}; standard errors assume a converged fit"
        )
    module.scale_weight = scale_penalty / fit_data.n_train
    return Fit(module, metrics, best.history, members, best, penalty, ordering, scale_penalty, path)


def train_and_evaluate(
    cfg, table, data: SplitTensors, estimation: Estimation, artifacts, label, checkpoints=None
):
    fit = estimate(cfg, table, data, estimation, label, checkpoints)
    module, metrics = fit.module, fit.metrics
    with torch.no_grad():
        for split in SPLITS:
            if data.size(split):
                value = float(module.nll(data.x[split], data.y[split]))
                if not np.isfinite(value):
                    raise TrainingError(f"{split}/nll is {value} at the final weights")
                metrics[f"{split}/nll"] = value
                extra = module.family.evaluation_metrics(
                    module.mixture(data.x[split]), module.y_scaler(data.y[split]), module.y_scaler
                )
                metrics.update({f"{split}/{name}": v for name, v in extra.items()})
        ratio = module.family.scale_floor_ratio(module.mixture(data.x["train"]))
    if data.size("test"):
        calibration = calibrate(module, data.x["test"], data.y["test"], seed=int(cfg.seed))
        if calibration is not None:
            metrics.update(calibration.metrics("test"))
            (artifacts / "plots").mkdir(parents=True, exist_ok=True)
            plots.predictive_calibration(
                calibration, artifacts / "plots" / "predictive_calibration.png", label.strip("[] ")
            )
    if ratio is not None:
        metrics["train/scale_floor_ratio"] = ratio
        if ratio < SCALE_FLOOR_MARGIN:
            warn(
                f"{label}a component's scale comes within {ratio:.2f}x of its floor "
                f"(model.min_scale) on the training x: it is collapsing onto a few rows; "
                "consider a larger train.penalty, fewer components or a smaller network"
            )
    before = metrics.get("val/nll_before_polish")
    if cfg.train.polish and before is not None:
        metrics["val/polish_rise"] = metrics["val/nll"] - before
        if metrics["val/polish_rise"] > POLISH_VAL_RISE:
            warn(
                f"{label}the polish raised val/nll from {before:.4f} to {metrics['val/nll']:.4f} "
                f"(more than {POLISH_VAL_RISE:g}): the penalized training optimum fits the "
                "validation rows worse than the early-stopped weights (a flexible network on "
                "little data, or heavy tails); consider train.penalty_select=validation, "
                "train.scale_penalty > 0 or a smaller model"
            )
    if fit.path is not None:
        write_penalty_path(fit.path, artifacts / "plots", label.strip("[] "), before)
    if cfg.data.get("eval_path"):
        x_eval, y_eval, log_p = load_eval_sample(
            cfg.data.eval_path, table.x.shape[1], table.y.shape[1:]
        )
        kl = kl_estimate(log_p, model_log_prob(module, x_eval, y_eval))
        metrics["test/kl_to_truth"] = kl.value
        metrics["test/kl_to_truth_se"] = kl.se
        if cfg.train.polish:
            final_state = copy.deepcopy(module.net.state_dict())
            module.net.load_state_dict(fit.best.before_polish)
            before_kl = kl_estimate(log_p, model_log_prob(module, x_eval, y_eval))
            module.net.load_state_dict(final_state)
            metrics["test/kl_to_truth_before_polish"] = before_kl.value

    save_checkpoint(module, artifacts / "model" / "model.ckpt")
    if len(fit.members) > 1:
        write_restarts(fit, artifacts / "restarts")
    return metrics, fit


def save_checkpoint(module: MDNModule, path: Path) -> None:
    """A Lightning checkpoint (state dict and hyperparameters) that
    ``MDNModule.load_from_checkpoint(path)`` reads with nothing else at hand."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )


def write_penalty_path(path: PathChoice, folder: Path, title: str, val_before) -> None:
    """plots/penalty_path.csv (one row per lambda walked) and plots/penalty_path.png."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = path.frame
    frame.to_csv(folder / "penalty_path.csv", index=False)
    plots.penalty_path(frame, folder / "penalty_path.png", title, val_before)


def write_restarts(fit: Fit, folder: Path) -> None:
    """restarts/restarts.csv (one row per restart) and restarts/restart_<r>.ckpt (each loadable)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for member in fit.members:
        save_checkpoint(member.module, folder / f"restart_{member.index}.ckpt")
        rows.append(
            {
                "restart": member.index,
                "seed": member.seed,
                "objective": member.objective,
                "nll": member.nll,
                "val_nll": member.val_nll,
                "val_nll_before_polish": member.val_nll_before_polish,
                "grad_norm": member.grad_max,
                "converged": member.converged,
                "epochs": member.epochs,
                "best_epoch": member.best_epoch,
                "diverged": not member.alive,
                "best": member.index == fit.best.index,
            }
        )
    pd.DataFrame(rows).to_csv(folder / "restarts.csv", index=False)


def restart_curves(fit: Fit) -> dict[str, list[float]]:
    """restarts/objective, restarts/val_nll, restarts/grad_norm with step = restart index."""
    return {
        "restarts/objective": [m.objective for m in fit.members],
        "restarts/val_nll": [m.val_nll for m in fit.members],
        "restarts/grad_norm": [m.grad_max for m in fit.members],
    }


# --- inference -------------------------------------------------------------------------------
def infer(
    cfg,
    module,
    data: SplitTensors,
    x_points: np.ndarray,
    label: str,
    penalty: float = 0.0,
    scale_penalty: float | None = None,
) -> InferenceResult | None:
    """Standard errors at the fitted weights, or None when switched off: the dense path up to
    ``inference.dense_max_params`` free weights, the matrix-free path above."""
    settings = cfg.inference
    if not settings.get("enabled", True):
        return None
    # the curvature and scores of the training objective, the scale penalty's terms included
    # (at the c the estimate minimised: the validation path may have chosen it from a list)
    if scale_penalty is None:
        scale_penalty = float(cfg.train.get("scale_penalty", 0.0))
    module.scale_weight = scale_penalty / data.size("train")
    n_params = FlatModel(module, str(settings.params)).n_params
    inputs = (module, data.x["train"], data.y["train"], x_points)
    shared = {
        "params": str(settings.params),
        "eig_rtol": float(settings.eig_rtol),
        "chunk": int(settings.chunk),
        "penalty": float(penalty),
        "basis_rtol": float(settings.get("basis_rtol", 1e-10)),
        "label": label,
    }
    if n_params > int(settings.dense_max_params):
        say(
            f"{label}inference: {n_params} weights > inference.dense_max_params "
            f"{settings.dense_max_params}: matrix-free path (Hessian-vector products, no A)"
        )
        max_points = settings.get("max_points", 5)
        result = run_inference_matrix_free(
            *inputs,
            **shared,
            rtol=float(settings.get("solver_rtol", 1e-8)),
            max_iter=int(settings.get("solver_max_iter", 3000)),
            max_points=None if max_points is None else int(max_points),
            lanczos_steps=int(settings.get("lanczos_steps", 30)),
            cache_graph=data.size("train") <= int(settings.get("hvp_cache_rows", 200_000)),
        )
    else:
        say(f"{label}inference: Hessian and scores on {data.size('train')} training rows")
        result = run_inference(
            *inputs,
            **shared,
            x_grid=x_grid(data.x["train"].numpy()),
            weight_se_max_params=int(settings.get("weight_se_max_params", 4000)),
        )
    grad_norm = result.metrics["inference/grad_norm"]
    if grad_norm > float(settings.grad_tol):
        warn(
            f"{label}max|grad| {grad_norm:.2e} > inference.grad_tol {settings.grad_tol:g}: the fit "
            "is not at an optimum of the training objective, so the standard errors' asymptotic theory does not apply"
        )
    return result


def x_grid(x_train: np.ndarray, size: int = 100) -> np.ndarray | None:
    """An even grid over the training range of a 1-d x, for the band plot; None otherwise."""
    if x_train.shape[1] != 1:
        return None
    return np.linspace(x_train.min(), x_train.max(), size)[:, None]


# --- artifacts -------------------------------------------------------------------------------
def prediction_points(cfg: DictConfig, table: Table, data: SplitTensors) -> np.ndarray:
    """``inference.points`` (checked before any run starts), else the first 100 test rows."""
    points_path = cfg.inference.get("points")
    if points_path:
        return read_points(points_path, table, list(cfg.data.x_cols or table.x_names))
    split = "test" if data.size("test") else "train"
    return data.x[split][:DEFAULT_POINTS].numpy()


def write_artifacts(
    cfg,
    module,
    table: Table,
    splits: Splits,
    artifacts: Path,
    history,
    metrics,
    x_points,
    inference: InferenceResult | None,
    identified_z: float = 3.0,
):
    (artifacts / "plots").mkdir(parents=True, exist_ok=True)
    (artifacts / "inference").mkdir(parents=True, exist_ok=True)
    (artifacts / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (artifacts / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if table.encodings:
        (artifacts / "data").mkdir(exist_ok=True)
        encoding = {
            col: {"reference": levels[0], "indicators": [f"{col}={lv}" for lv in levels[1:]]}
            for col, levels in table.encodings.items()
        }
        (artifacts / "data" / "encoding.json").write_text(json.dumps(encoding, indent=2) + "\n")
    if table.y_levels:
        (artifacts / "data").mkdir(exist_ok=True)
        codes = {col: dict(enumerate(levels)) for col, levels in table.y_levels.items()}
        (artifacts / "data" / "y_encoding.json").write_text(json.dumps(codes, indent=2) + "\n")

    if inference is not None:
        inference.parameters.to_csv(artifacts / "inference" / "parameters.csv", index=False)
        if inference.grid is not None:
            inference.grid.to_csv(artifacts / "inference" / "bands.csv", index=False)
    predictions = (
        inference.predictions if inference is not None else predictions_frame(module, x_points)
    )
    predictions = predictions.assign(identified=identified_flags(predictions, identified_z))
    predictions.to_csv(artifacts / "inference" / "predictions.csv", index=False)

    title = run_name(cfg)
    plots.training_curves(history, artifacts / "plots" / "training_curves.png", title)
    pd.DataFrame(_curves_table(history)).to_csv(
        artifacts / "plots" / "training_curves.csv", index=False
    )
    run_figures.draw(
        str(cfg.model.family),
        module,
        table,
        splits,
        artifacts / "plots",
        title,
        inference,
        float(cfg.inference.eig_rtol),
        metrics,
    )


def _curves_table(history: dict[str, list[float]]) -> dict[str, list[float]]:
    n = max((len(v) for v in history.values()), default=0)
    table = {"epoch": list(range(1, n + 1))}
    for name, values in history.items():
        if values:
            table[name.replace("/", "_")] = values + [float("nan")] * (n - len(values))
    return table


def write_dvc_outputs(cfg, metrics: dict[str, float], history, artifacts: Path) -> None:
    """Files DVC tracks: a metrics JSON and a folder of plots (``metrics_file``, ``plots_dir``)."""
    if cfg.get("metrics_file"):
        path = Path(cfg.metrics_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        stable = {k: v for k, v in metrics.items() if not k.endswith("/seconds")}  # timings vary
        path.write_text(json.dumps(stable, indent=2, sort_keys=True) + "\n")
    if cfg.get("plots_dir"):
        target = Path(cfg.plots_dir)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(artifacts / "plots", target)
