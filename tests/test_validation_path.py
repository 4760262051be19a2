"""train.penalty_select=validation: the path of polished optima against brute force."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mdnlab.data.simulators import SIMULATORS
from mdnlab.errors import ConfigError
from mdnlab.estimation.adam import TrainerSettings
from mdnlab.estimation.fit import FitData, PolishSettings, fit_members
from mdnlab.estimation.validation_path import (
    PathPoint,
    PathSettings,
    chosen_index,
    select_by_validation,
)
from mdnlab.module import MDNModule

TRAINER = TrainerSettings(max_epochs=300, patience=30)
POLISH = PolishSettings(tol=1e-7, max_iter=4000)
NO_POLISH = PolishSettings(enabled=False)
PATH = PathSettings(strongest=300.0, weakest=0.3, count=7, patience=99)


def problem(n_train: int = 150, n_val: int = 150, seed: int = 0) -> FitData:
    rng = np.random.default_rng(seed)
    x, y = SIMULATORS["synth_mixture"].sample(n_train + n_val, rng)
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    return FitData(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def module_maker(data: FitData):
    def make_module(seed: int) -> MDNModule:
        torch.manual_seed(seed)
        module = MDNModule(1, [1], n_components=2, hidden_sizes=[6], identifiability="none")
        module.x_scaler.fit(data.x_train)
        module.y_scaler.fit(data.y_train)
        return module

    return make_module


def walk(data: FitData, seeds: list[int], settings: PathSettings = PATH):
    ensemble, members = fit_members(
        module_maker(data), seeds, data, 3.0, TRAINER, 0.02, polish=NO_POLISH
    )
    return select_by_validation(ensemble, members, data, POLISH, settings), members


def test_path_picks_the_penalty_a_grid_of_independent_fits_picks():
    torch.set_num_threads(1)
    data = problem()
    choice, _ = walk(data, [3])
    assert len(choice.points) == PATH.count
    brute = []
    for penalty in PATH.penalties():
        _, (alone,) = fit_members(
            module_maker(data), [3], data, float(penalty), TRAINER, 0.02, polish=POLISH
        )
        assert alone.converged
        brute.append(alone.val_nll)
    assert choice.index == int(np.argmin(brute))
    assert choice.penalty == pytest.approx(PATH.penalties()[int(np.argmin(brute))])
    # both walks found the same optimum at the chosen penalty
    assert choice.points[choice.index].val_nll == pytest.approx(min(brute), abs=2e-3)
    # the path is not flat: the choice matters on this problem
    assert max(brute) - min(brute) > 0.05


def test_path_members_batched_equal_the_paths_walked_one_seed_at_a_time():
    torch.set_num_threads(1)
    data = problem(seed=1)
    batched, members = walk(data, [5, 6])
    alone = [walk(data, [seed])[0] for seed in (5, 6)]
    for k, point in enumerate(batched.points):
        objectives = [a.points[k].objective for a in alone]
        best = alone[int(np.argmin(objectives))].points[k]
        assert point.objective == pytest.approx(best.objective, abs=1e-8)
        assert point.val_nll == pytest.approx(best.val_nll, abs=1e-6)
    # the ensemble is left at the chosen optimum
    chosen = batched.points[batched.index]
    best = min(members, key=lambda m: m.objective)
    assert best.val_nll == pytest.approx(chosen.val_nll, abs=1e-9)
    assert best.objective == pytest.approx(chosen.objective, abs=1e-9)


def test_a_list_of_scale_penalties_walks_each_from_the_early_stopped_weights():
    torch.set_num_threads(1)
    data = problem(seed=4)
    both = replace(PATH, scale_penalties=(0.0, 5.0))
    choice, members = walk(data, [3], both)
    assert {p.scale_penalty for p in choice.points} == {0.0, 5.0}
    for strength in (0.0, 5.0):
        ensemble, alone = fit_members(
            module_maker(data),
            [3],
            data,
            3.0,
            TRAINER,
            0.02,
            polish=NO_POLISH,
            scale_penalty=strength,
        )
        single = select_by_validation(ensemble, alone, data, POLISH, PATH)
        mine = [p for p in choice.points if p.scale_penalty == strength]
        assert [p.penalty for p in mine] == [p.penalty for p in single.points]
        np.testing.assert_allclose(
            [p.val_nll for p in mine], [p.val_nll for p in single.points], atol=1e-6
        )
    chosen = choice.points[choice.index]
    converged = [p.val_nll for p in choice.points if p.converged]
    assert chosen.val_nll == min(converged)
    assert choice.scale_penalty == chosen.scale_penalty
    # the members are left at the chosen point, under its scale penalty
    assert min(m.objective for m in members) == pytest.approx(chosen.objective, abs=1e-9)


def test_effective_parameters_fall_as_the_penalty_grows():
    torch.set_num_threads(1)
    choice, members = walk(problem(seed=2), [7])
    gammas = [p.effective_params for p in choice.points]
    n_weights = sum(p.numel() for p in members[0].module.net.parameters())
    assert all(0 < g <= n_weights for g in gammas)
    assert gammas[0] < gammas[-1]  # strongest first
    assert np.all(np.diff(gammas) > -0.5)  # near-monotone along the grid


def test_patience_stops_the_path_after_that_many_points_without_a_better_val_nll():
    torch.set_num_threads(1)
    settings = PathSettings(strongest=300.0, weakest=0.3, count=7, patience=1)
    choice, _ = walk(problem(), [3], settings)
    grid = list(settings.penalties())
    walked = [grid.index(min(grid, key=lambda g, p=p: abs(g - p.penalty))) for p in choice.points]
    start = grid.index(min(grid, key=lambda g: abs(math.log(g / 3.0))))
    assert start in walked and len(walked) < settings.count  # one direction stopped early
    at_start = choice.points[walked.index(start)].val_nll
    # the strongest point walked is the first that did not improve on the start: after it,
    # with patience 1, nothing stronger was tried
    assert choice.points[0].val_nll >= at_start
    assert walked[0] > 0


def point(penalty: float, val: float, se: float) -> PathPoint:
    nan = float("nan")
    return PathPoint(penalty, nan, nan, val, se, nan, True, nan, 0, 0)


def test_the_one_standard_error_rule_takes_the_strongest_penalty_within_one_se():
    points = [point(100, 1.29, 0.05), point(10, 1.12, 0.05), point(1, 1.10, 0.05)]
    points.append(point(0.1, 1.25, 0.05))
    assert chosen_index(points, "min") == 2
    assert chosen_index(points, "1se") == 1  # 1.12 <= 1.10 + 0.05, 1.29 is not
    points[2] = point(1, 1.10, 0.01)
    assert chosen_index(points, "1se") == 2
    points[1] = point(10, math.nan, 0.05)
    assert chosen_index(points, "min") == 2
    # an unconverged point is no optimum: never chosen while a converged one exists
    points[2] = PathPoint(1, math.nan, math.nan, 0.5, 0.01, 1e-2, False, math.nan, 0, 0)
    assert chosen_index(points, "min") == 3
    assert chosen_index(points, "1se") == 0  # 1.29 <= 1.25 + 0.05


@pytest.mark.parametrize(
    "node, fragment",
    [
        ({"weakest": 0.0}, "0 < weakest < strongest"),
        ({"strongest": 1.0, "weakest": 2.0}, "0 < weakest < strongest"),
        ({"count": 1}, "count must be >= 2"),
        ({"rule": "best"}, "expected one of min, 1se"),
        ({"patience": 0}, "patience must be >= 1"),
        ({"step": 2}, "unknown key"),
        ({"scale_penalties": [1, -1]}, "scale_penalties must be a finite number >= 0"),
        ({"scale_penalties": ["a"]}, "scale_penalties must be a number >= 0"),
    ],
)
def test_bad_path_settings_are_refused_by_name(node, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PathSettings.from_config(node)
