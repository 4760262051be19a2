"""``train.penalty_select=validation``: the ridge penalty chosen on the validation rows.

A grid of lambda values, log-spaced from strong to weak. The members start at their
early-stopped weights and are polished to the penalized optimum at the grid point nearest the
penalty Adam trained with; from there the path walks towards stronger penalties, each polish
warm-started from the previous optimum, then, from the start point again, towards weaker ones.
Unlike glmnet's convex path this one does not begin at the strongest penalty: a network
shrunk there sits near the saddle at zero hidden weights, and a warm-started walk back can
stay on that near-constant branch long after an independent fit would have left it
(docs/estimation.md gives the measurement). At every point the estimate is the best member by
the penalized training objective (the same rule as a single fit) and its validation NLL is
recorded. The chosen lambda is the one with the lowest validation NLL (``rule=min``), or the
strongest lambda within one standard error of it (``rule=1se``, the standard error being that
of the mean of the per-row validation NLLs). The path stops early once ``patience`` points in a
row (in either direction) have not improved on the best validation NLL, and the walk towards
weaker penalties stops at its first unconverged point: weak penalties are where polishes are
long and fits overfit, the validation curve is not coming back there, and only converged
points can be chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import torch

from mdnlab.errors import ConfigError
from mdnlab.estimation.fit import FitData, MemberResult, PolishSettings, best_member, polish_members
from mdnlab.estimation.objective import check_penalty
from mdnlab.inference.curvature import hessian_mean_nll
from mdnlab.inference.functional import FlatModel
from mdnlab.inference.scores import ScoreMatrix
from mdnlab.progress import say

RULES = ("min", "1se")
EFFECTIVE_PARAMS_MAX_WEIGHTS = 1500  # above this, gamma (one exact Hessian a point) is skipped


@dataclass(frozen=True)
class PathSettings:
    strongest: float = 1000.0
    weakest: float = 0.01
    count: int = 16
    rule: str = "min"
    patience: int = 3
    scale_penalties: tuple[float, ...] = ()  # c values walked (empty: train.scale_penalty only)

    @classmethod
    def from_config(cls, node) -> PathSettings:
        node = dict(node or {})
        known = {"strongest", "weakest", "count", "rule", "patience", "scale_penalties"}
        unknown = set(node) - known
        if unknown:
            raise ConfigError(
                f"train.penalty_path has unknown key(s) {sorted(unknown)}; expected "
                f"{', '.join(sorted(known))}"
            )
        strengths = tuple(
            check_penalty(c, "each of train.penalty_path.scale_penalties")
            for c in node.get("scale_penalties") or ()
        )
        settings = cls(
            float(node.get("strongest", cls.strongest)),
            float(node.get("weakest", cls.weakest)),
            int(node.get("count", cls.count)),
            str(node.get("rule", cls.rule)),
            int(node.get("patience", cls.patience)),
            strengths,
        )
        if not (math.isfinite(settings.weakest) and 0 < settings.weakest < settings.strongest):
            raise ConfigError(
                f"train.penalty_path: need 0 < weakest < strongest (finite), got weakest="
                f"{settings.weakest:g}, strongest={settings.strongest:g}"
            )
        if not math.isfinite(settings.strongest):
            raise ConfigError(f"train.penalty_path.strongest={settings.strongest}: not finite")
        if settings.count < 2:
            raise ConfigError(f"train.penalty_path.count must be >= 2, got {settings.count}")
        if settings.rule not in RULES:
            raise ConfigError(
                f"train.penalty_path.rule={settings.rule!r}; expected one of {', '.join(RULES)}"
            )
        if settings.patience < 1:
            raise ConfigError(f"train.penalty_path.patience must be >= 1, got {settings.patience}")
        return settings

    def penalties(self) -> np.ndarray:
        """The path, strongest first."""
        return np.geomspace(self.strongest, self.weakest, self.count)


@dataclass(frozen=True)
class PathPoint:
    penalty: float
    objective: float  # penalized training objective of the best member
    train_nll: float
    val_nll: float
    val_nll_se: float
    grad_max: float
    converged: bool
    effective_params: float  # gamma = sum n a_i / (n a_i + lambda); NaN when skipped
    polish_iterations: int
    best_member: int
    scale_penalty: float = 0.0  # c of the scale penalty at this point


@dataclass(frozen=True)
class PathChoice:
    penalty: float
    index: int
    points: list[PathPoint]
    rule: str
    scale_penalty: float = 0.0  # the chosen c

    @property
    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame([p.__dict__ for p in self.points])
        frame["chosen"] = np.arange(len(frame)) == self.index
        return frame


def effective_params(member: MemberResult, data: FitData, penalty: float, scale_weight: float):
    """Takeuchi's (Murata's NIC) effective number of parameters, tr(A_lambda^-1 B): A_lambda
    the Hessian of the penalized objective per row, B the centred covariance of the per-row
    scores. Unlike MacKay's gamma it stays >= 0 where A itself has negative eigenvalues,
    as a penalized network's data term often does. NaN above ``EFFECTIVE_PARAMS_MAX_WEIGHTS``
    weights or where A_lambda is not positive definite (the fit is not at a minimum)."""
    module = member.module
    n_weights = sum(p.numel() for p in module.net.parameters())
    if n_weights > EFFECTIVE_PARAMS_MAX_WEIGHTS or data.stacked:
        return float("nan")
    saved, module.scale_weight = module.scale_weight, scale_weight
    try:
        flat = FlatModel(module, "all")
        x, y = data.x_train, data.y_train
        a = hessian_mean_nll(flat, x, y).numpy() + penalty / data.n_train * np.eye(n_weights)
        # at the optimum the mean score equals the penalty's gradient, lambda theta / n
        mean_score = flat.theta.detach().numpy() * penalty / data.n_train
        b = ScoreMatrix.build(flat, x, y, mean_score).matrix
    finally:
        module.scale_weight = saved
    try:
        factor = scipy.linalg.cho_factor((a + a.T) / 2)
    except np.linalg.LinAlgError:
        return float("nan")
    return float(np.trace(scipy.linalg.cho_solve(factor, b)))


def validation_nll(member: MemberResult, data: FitData) -> tuple[float, float]:
    """Mean and standard error of the per-row validation NLL at the member's weights."""
    with torch.no_grad():
        rows = -member.module.log_prob(data.x_val, data.y_val).double()
    mean = float(rows.mean())
    se = float(rows.std() / math.sqrt(rows.numel())) if rows.numel() > 1 else float("nan")
    return mean, se


def chosen_index(points: list[PathPoint], rule: str) -> int:
    """Among the converged points with a finite val NLL (all finite ones when none converged):
    the lowest val NLL, or for ``1se`` the most penalized point within one SE of it (the
    strongest lambda, then the strongest scale penalty). An unconverged point is not an
    optimum, and the standard errors need one."""
    values = np.array([p.val_nll for p in points])
    eligible = np.isfinite(values)
    converged = eligible & np.array([p.converged for p in points])
    if converged.any():
        eligible = converged
    if not eligible.any():
        return 0
    best = int(np.nanargmin(np.where(eligible, values, np.nan)))
    if rule == "min":
        return best
    bound = values[best] + points[best].val_nll_se
    within = np.flatnonzero(eligible & (values <= bound))
    return int(max(within, key=lambda i: (points[i].penalty, points[i].scale_penalty)))


def start_index(penalties: np.ndarray, start: float) -> int:
    """The grid point nearest (in log) the penalty Adam trained with."""
    return int(np.argmin(np.abs(np.log(penalties) - math.log(start))))


def select_by_validation(
    ensemble,
    members: list[MemberResult],
    data: FitData,
    polish: PolishSettings,
    settings: PathSettings,
    label: str = "",
) -> PathChoice:
    """Walks the lambda path once for each scale-penalty strength (``settings.scale_penalties``,
    default the ensemble's own), each walk from the early-stopped weights; leaves
    ``ensemble.penalty``, ``ensemble.scale_penalty`` and the members at the chosen optimum."""
    if not data.has_val:
        raise ConfigError(
            "train.penalty_select=validation needs validation rows (data.val_fraction > 0)"
        )
    early_stopped = ensemble.members.flat().detach().clone()
    start = ensemble.penalty
    strengths = settings.scale_penalties or (ensemble.scale_penalty,)
    walked: list[tuple[PathPoint, torch.Tensor]] = []
    for strength in strengths:
        ensemble.scale_penalty = float(strength)
        ensemble.members.set_flat(early_stopped.clone())
        walked += walk_lambda(ensemble, members, data, polish, settings, start, label)
    walked.sort(key=lambda w: (w[0].scale_penalty, -w[0].penalty))
    points = [point for point, _ in walked]
    index = chosen_index(points, settings.rule)
    chosen = points[index]
    choice = PathChoice(chosen.penalty, index, points, settings.rule, chosen.scale_penalty)
    ensemble.members.set_flat(walked[index][1])
    ensemble.penalty, ensemble.scale_penalty = chosen.penalty, chosen.scale_penalty
    polish_members(ensemble, members, data, polish, label)  # at its optimum already: fills results
    scale = f", scale penalty {chosen.scale_penalty:g}" if len(strengths) > 1 else ""
    say(
        f"{label}penalty path: lambda {chosen.penalty:.4g}{scale} chosen ({settings.rule} rule; "
        f"{len(points)} of {len(strengths) * settings.count} points walked), val NLL "
        f"{chosen.val_nll:.4f}"
    )
    return choice


def walk_lambda(
    ensemble, members, data: FitData, polish: PolishSettings, settings: PathSettings, start, label
) -> list[tuple[PathPoint, torch.Tensor]]:
    """One walk along the lambda grid at the ensemble's scale penalty, from its current
    weights: the points visited and the members' weights at each."""
    strength = ensemble.scale_penalty
    scale_weight = strength / data.n_train
    penalties = settings.penalties()
    walked: dict[int, tuple[PathPoint, torch.Tensor]] = {}

    def visit(i: int) -> PathPoint:
        penalty = float(penalties[i])
        ensemble.penalty = penalty
        polish_members(ensemble, members, data, polish, label)
        best = best_member(members)
        val, se = validation_nll(best, data)
        point = PathPoint(
            penalty,
            best.objective,
            best.nll,
            val,
            se,
            best.grad_max,
            best.converged,
            effective_params(best, data, penalty, scale_weight),
            best.polish_iterations,
            best.index,
            strength,
        )
        walked[i] = (point, ensemble.members.flat().detach().clone())
        gamma = point.effective_params
        say(
            f"{label}penalty path: lambda {penalty:.4g}"
            + (f" (scale penalty {strength:g})" if strength else "")
            + f", val NLL {val:.4f} (+- {se:.4f}), train objective {best.objective:.4f}, "
            f"max|grad| {best.grad_max:.1e}" + ("" if math.isnan(gamma) else f", gamma {gamma:.1f}")
        )
        return point

    def best_so_far() -> float:
        values = [p.val_nll for p, _ in walked.values() if p.converged]
        return min(values) if values else math.inf

    first = start_index(penalties, start)
    visit(first)
    start_state = walked[first][1]
    # towards stronger penalties, then towards weaker ones (only from a converged start:
    # weaker penalties converge no better)
    for step in (-1, 1) if walked[first][0].converged else (-1,):
        ensemble.members.set_flat(start_state.clone())
        since_best, i = 0, first + step
        while 0 <= i < len(penalties) and since_best < settings.patience:
            record = best_so_far()
            point = visit(i)
            improved = point.converged and point.val_nll < record
            since_best = 0 if improved else since_best + 1
            if step > 0 and not point.converged:
                break  # weaker penalties converge no better, and only optima can be chosen
            i += step
    return [walked[i] for i in sorted(walked)]
