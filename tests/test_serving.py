"""What a training run leaves in MLflow for a user: the pyfunc model (loaded in-process and
served over HTTP by ``mlflow models serve``), the dataset input and the run description.

References: the ``FittedModel`` of the same run, loaded by ``mdnlab.load`` (itself tested
against scipy in tests/test_fitted.py); the training rows' own encoding; the CSV the run read
(its md5 by hashlib, its row count by pandas).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TINY, write_tiny_csv
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

import mdnlab
from mdnlab.fitted.pyfunc import wide_predictions
from mdnlab.pipeline import run
from mdnlab.tracking import sqlite_path


def train(tmp_path: Path, csv: Path, x_cols: str, y_cols: str, *overrides) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=file",
                f"data.path={csv}",
                f"data.x_cols={x_cols}",
                f"data.y_cols={y_cols}",
                f"logger.tracking_uri={uri}",
                *TINY,
                *overrides,
            ],
        )
    run(cfg)
    client = MlflowClient(uri)
    (run_,) = client.search_runs([client.get_experiment_by_name("file").experiment_id])
    return uri, run_.info.run_id


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory):
    """One run shared by the tests that only read it (its data file: ``trained_on``)."""
    folder = tmp_path_factory.mktemp("gaussian_run")
    return train(folder, write_tiny_csv(folder), "[x]", "[y]")


def trained_on(gaussian_run) -> Path:
    return sqlite_path(gaussian_run[0]).parent / "tiny.csv"


@pytest.fixture
def pyfunc_model(gaussian_run):
    uri, run_id = gaussian_run
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)


X = pd.DataFrame({"x": [-0.9, -0.2, 0.0, 0.4, 0.95]})


def test_pyfunc_round_trip_equals_the_loaded_model(gaussian_run, pyfunc_model):
    uri, run_id = gaussian_run
    fitted = mdnlab.load(run_id, tracking_uri=uri)
    signature = pyfunc_model.metadata.signature
    assert signature.inputs.input_names() == ["x"]
    assert signature.params.to_dict()[0]["default"] == "mean,sd,quantiles"

    served = pyfunc_model.predict(X)  # the defaults of a scalar-y Gaussian
    long = fitted.predict(X, what="mean,sd,quantiles", quantiles=[0.05, 0.5, 0.95])
    expected = long.pivot(index="row", columns="quantity", values="value")
    assert list(served.columns) == list(dict.fromkeys(long.quantity))
    np.testing.assert_allclose(served[expected.columns].to_numpy(), expected.to_numpy(), rtol=1e-12)

    asked = pyfunc_model.predict(X, params={"what": "quantiles", "quantiles": [0.1, 0.9]})
    np.testing.assert_allclose(asked.to_numpy(), fitted.quantile(X, [0.1, 0.9]), rtol=1e-12)


def test_pyfunc_categorical_with_text_inputs(tmp_path):
    """A class-coded target and a text x column: the input example is raw training rows (text
    levels, not indicators), and the served probabilities are the model's, summing to 1."""
    rng = np.random.default_rng(3)
    n = 150
    group = rng.choice(["north", "south", "west"], n)
    x = rng.uniform(-1, 1, n)
    logit = 1.5 * x + (group == "south") - 0.5 * (group == "west")
    y = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-logit)), "leave", "stay")
    csv = tmp_path / "vote.csv"
    pd.DataFrame({"x": x, "group": group, "vote": y}).to_csv(csv, index=False)
    uri, run_id = train(tmp_path, csv, "[x,group]", "[vote]", "model=categorical")

    mlflow.set_tracking_uri(uri)
    try:
        model_uri = f"runs:/{run_id}/model"
        local = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "dl"))
        example = mlflow.models.Model.load(local).load_input_example(local)
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    fitted = mdnlab.load(run_id, tracking_uri=uri)
    assert set(example.group) <= {"north", "south", "west"}
    # The example decodes to training rows: each is a row of the CSV the run read.
    rows = pd.read_csv(csv)
    for _, r in example.iterrows():
        match = rows[(rows.group == r.group) & np.isclose(rows.x, r.x, rtol=0, atol=1e-12)]
        assert len(match) == 1

    query = pd.DataFrame({"x": [-0.5, 0.0, 0.5], "group": ["west", "north", "south"]})
    served = pyfunc.predict(query)
    probabilities = fitted.class_probabilities(query)["vote"]
    np.testing.assert_allclose(served.to_numpy(), probabilities.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-12)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow
def test_the_served_model_answers_over_http(gaussian_run, tmp_path):
    uri, run_id = gaussian_run
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    # The server execs `uvicorn` by name: the one beside this interpreter, venv activated or not.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    mlflow_cli = [sys.executable, "-m", "mlflow"]
    server = subprocess.Popen(
        [*mlflow_cli, "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "serve.log", "w"),
        start_new_session=True,  # its workers share its process group: stopped together
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the server did not answer /ping in 180 s"
                time.sleep(0.5)
        body = {
            "dataframe_split": {"columns": ["x"], "data": X.to_numpy().tolist()},
            "params": {"what": "mean,quantiles", "quantiles": [0.05, 0.5, 0.95]},
        }
        status, answer = post(port, body)
        assert status == 200, answer
        fitted = mdnlab.load(run_id, tracking_uri=uri)
        expected = wide_predictions(fitted, X, "mean,quantiles", [0.05, 0.5, 0.95])
        got = pd.DataFrame(answer["predictions"])[expected.columns]
        np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-12)

        status, answer = post(port, {"dataframe_split": {"columns": ["z"], "data": [[0.0]]}})
        assert status == 400 and "missing inputs ['x']" in answer["message"]
        # a value the model refuses (missing): 400 and the reason, no stack trace
        status, answer = post(port, {"dataframe_split": {"columns": ["x"], "data": [[None]]}})
        assert status == 400 and "row 0: value is missing" in answer["message"], answer
        assert "Traceback" not in json.dumps(answer)
        bad_q = {**body, "params": {"what": "quantiles", "quantiles": [1.5]}}
        status, answer = post(port, bad_q)
        assert status == 400 and "1.5" in answer["message"], answer
    finally:
        if group_alive(server.pid):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    deadline = time.monotonic() + 30  # its worker finishes a graceful shutdown on its own
    while time.monotonic() < deadline and group_alive(server.pid):
        time.sleep(0.2)
    assert not group_alive(server.pid)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_run_lists_its_dataset_and_describes_itself(tmp_path, tiny_csv):
    # 40 hidden units on 84 training rows: more weights than rows, a warning the note repeats.
    uri, run_id = train(tmp_path, tiny_csv, "[x]", "[y]", "model.hidden_sizes=[40]")
    run_ = MlflowClient(uri).get_run(run_id)
    (entry,) = run_.inputs.dataset_inputs
    dataset = entry.dataset
    assert dataset.name == "file"
    assert dataset.digest == hashlib.md5(tiny_csv.read_bytes()).hexdigest()
    assert json.loads(dataset.source)["uri"] == str(tiny_csv.resolve())
    rows = len(pd.read_csv(tiny_csv))
    profile = json.loads(dataset.profile)
    assert (
        profile["rows"]
        == rows
        == profile["train_rows"] + profile["val_rows"] + profile["test_rows"]
    )
    (context,) = [t.value for t in entry.tags if t.key == "mlflow.data.context"]
    assert (
        context
        == f"train={profile['train_rows']} val={profile['val_rows']} test={profile['test_rows']}"
    )

    note = run_.data.tags["mlflow.note.content"]
    metrics = run_.data.metrics
    assert "Gaussian MDN, K = 2, hidden [40] (tanh)" in note
    assert f"test NLL {metrics['test/nll']:.4f}" in note
    assert f"ridge penalty {metrics['train/penalty']:g}" in note
    assert "training rows for" in note and "weights" in note  # the warning, without its label
    assert "[file-gaussian" not in note
    assert ("NOT converged" in note) == (metrics["train/grad_norm"] > 1e-6)


def test_predict_se_recomputes_the_runs_own_standard_errors(gaussian_run, tmp_path):
    """At the run's inference points (its first test rows), ``predict(se=True)`` rebuilds the
    training split from the data file and gives the SEs the run logged at training time."""
    from omegaconf import OmegaConf

    from mdnlab.errors import FittedModelError
    from mdnlab.pipeline import SplitTensors, load_data

    uri, run_id = gaussian_run
    fitted = mdnlab.load(run_id, tracking_uri=uri)
    assert fitted.penalty == 3.0
    cfg = OmegaConf.create(fitted.config)
    points = SplitTensors.from_table(*load_data(cfg)).x["test"].numpy()[:, 0]
    logged_csv = MlflowClient(uri).download_artifacts(
        run_id, "inference/predictions.csv", str(tmp_path)
    )
    logged = pd.read_csv(logged_csv).rename(columns={"point": "row"})
    got = fitted.predict(
        pd.DataFrame({"x": points}), what="mean,variance,weights,quantiles", se=True
    )
    both = got.merge(logged, on=["row", "quantity"], suffixes=("", "_logged"))
    assert set(both.quantity) == {"mean[0]", "cov[0,0]", "weight[0]", "weight[1]"}
    assert len(both) == 4 * len(points)
    np.testing.assert_allclose(both.value, both.estimate, rtol=1e-10)
    for column in ("se_hessian", "se_sandwich"):
        np.testing.assert_allclose(both[column], both[f"{column}_logged"], rtol=1e-8)
    assert got[got.quantity.str.startswith("quantile")].se_hessian.isna().all()

    data = trained_on(gaussian_run)
    data.rename(tmp_path / "moved.csv")
    try:
        with pytest.raises(FittedModelError, match=r"training data .*tiny\.csv could not be read"):
            fitted.predict(pd.DataFrame({"x": [0.0]}), se=True)
    finally:
        (tmp_path / "moved.csv").rename(data)


def test_predict_cli_se_columns(gaussian_run, tmp_path, capsys):
    from test_predict_cli import predict

    uri, run_id = gaussian_run
    x = pd.DataFrame({"x": [-0.5, 0.0, 0.7]})
    x.to_csv(tmp_path / "x.csv", index=False)
    args = [f"run={run_id}", f"tracking_uri={uri}", f"input={tmp_path / 'x.csv'}"]
    code = predict.main([*args, f"output={tmp_path / 'p.csv'}", "what=mean,quantiles", "se=true"])
    assert code == 0, capsys.readouterr().err
    out = pd.read_csv(tmp_path / "p.csv")
    expected = mdnlab.load(run_id, tracking_uri=uri).predict(x, what="mean", se=True)
    np.testing.assert_allclose(out["se_hessian[mean[0]]"], expected.se_hessian, rtol=1e-12)
    np.testing.assert_allclose(out["se_sandwich[mean[0]]"], expected.se_sandwich, rtol=1e-12)
    assert not [c for c in out.columns if c.startswith("se_") and "quantile" in c]

    assert predict.main([*args, f"output={tmp_path / 'q.csv'}", "se=yes"]) == 2
    assert "se='yes'; expected true or false" in capsys.readouterr().err
    assert not (tmp_path / "q.csv").exists()
