"""``src/predict.py``: predictions from a fitted run on the command line.

References: a K = 1 Gaussian with hand-set weights, whose mean, sd and quantiles are computed
here in numpy and scipy from those weights; the ``FittedModel`` methods called directly; class
probabilities that must sum to 1. Models are built directly and saved as a run's artifact
folder (model/model.ckpt, config.yaml, data/encoding.json), as in tests/test_fitted.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

import mdnlab
from mdnlab.module import MDNModule
from mdnlab.pipeline import save_checkpoint

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
MIN_SCALE = 1e-3  # the Gaussian head's floor on a standardised sd


def load_predict():
    spec = importlib.util.spec_from_file_location("predict_under_test", REPO / "src" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


predict = load_predict()


def softplus(v):
    return np.logaddexp(0.0, v)


def write_run(folder: Path, module, x_cols, y_cols, x_levels=None, y_labels=None) -> Path:
    save_checkpoint(module, folder / "model" / "model.ckpt")
    config = {"data": {"x_cols": x_cols, "y_cols": y_cols}, "seed": 0}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "data").mkdir()
    encoding = {
        col: {"reference": lv[0], "indicators": [f"{col}={v}" for v in lv[1:]]}
        for col, lv in (x_levels or {}).items()
    }
    (folder / "data" / "encoding.json").write_text(json.dumps(encoding))
    codes = {col: dict(enumerate(labels)) for col, labels in (y_labels or {}).items()}
    (folder / "data" / "y_encoding.json").write_text(json.dumps(codes))
    return folder


# A K = 1 Gaussian on x = (t, g): g text with levels hi (reference), lo. Standardised mean
# W[0] @ x_s + b[0], standardised sd softplus(W[1] @ x_s + b[1]) + MIN_SCALE.
W = np.array([[0.8, -0.5], [0.3, 0.4]])
B = np.array([0.2, -0.1])
X_LOC, X_SCALE = np.array([1.0, 0.0]), np.array([2.0, 1.0])
Y_LOC, Y_SCALE = 10.0, 3.0


@pytest.fixture
def k1_run(tmp_path) -> Path:
    module = MDNModule(in_dim=2, event_shape=[1], n_components=1, hidden_sizes=[])
    with torch.no_grad():
        module.net[-1].weight.copy_(torch.tensor(W))
        module.net[-1].bias.copy_(torch.tensor(B))
        module.x_scaler.loc.copy_(torch.tensor(X_LOC))
        module.x_scaler.scale.copy_(torch.tensor(X_SCALE))
        module.y_scaler.loc.fill_(Y_LOC)
        module.y_scaler.scale.fill_(Y_SCALE)
    return write_run(tmp_path / "k1", module.eval(), ["t", "g"], ["y"], {"g": ["hi", "lo"]})


@pytest.fixture
def k1_input(tmp_path) -> Path:
    frame = pd.DataFrame(
        {"id": [7, 8, 9, 10], "g": ["lo", "hi", "hi", "lo"], "t": [-1.0, 0.5, 2.0, 4.0]}
    )
    path = tmp_path / "points.csv"
    frame.to_csv(path, index=False)
    return path


def k1_reference(frame: pd.DataFrame):
    """Mean and sd of y at each row, from the hand-set weights."""
    inputs = np.column_stack([frame.t, (frame.g == "lo").astype(float)])
    raw = ((inputs - X_LOC) / X_SCALE) @ W.T + B
    return Y_LOC + Y_SCALE * raw[:, 0], Y_SCALE * (softplus(raw[:, 1]) + MIN_SCALE)


def call(capsys, *args) -> tuple[int, str, str]:
    code = predict.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_k1_csv_against_scipy_and_the_fitted_model(k1_run, k1_input, tmp_path, capsys):
    out = tmp_path / "sub" / "pred.csv"  # a missing folder is made
    code, stdout, err = call(
        capsys,
        f"run={k1_run}",
        f"input={k1_input}",
        f"output={out}",
        "what=mean,sd,quantiles",
        "quantiles=[0.05,0.5,0.95]",
    )
    assert code == 0, err
    assert stdout.strip() == (
        f"predict: 4 rows, 5 quantities (mean[0], sd[0], quantile[0.05], quantile[0.5], "
        f"quantile[0.95]) -> {out}"
    )
    got = pd.read_csv(out)
    assert list(got.columns) == [
        "t",
        "g",
        "mean[0]",
        "sd[0]",
        "quantile[0.05]",
        "quantile[0.5]",
        "quantile[0.95]",
    ]
    frame = pd.read_csv(k1_input)
    assert got.g.tolist() == frame.g.tolist() and got.t.tolist() == frame.t.tolist()
    mean, sd = k1_reference(frame)
    np.testing.assert_allclose(got["mean[0]"], mean, rtol=1e-13)
    np.testing.assert_allclose(got["sd[0]"], sd, rtol=1e-13)
    for q in (0.05, 0.5, 0.95):
        want = stats.norm.ppf(q, loc=mean, scale=sd)
        np.testing.assert_allclose(got[f"quantile[{q:g}]"], want, rtol=0, atol=1e-9)
    fitted = mdnlab.load(k1_run)
    np.testing.assert_array_equal(got["mean[0]"], fitted.mean(frame)[:, 0])
    np.testing.assert_array_equal(
        got[["quantile[0.05]", "quantile[0.5]", "quantile[0.95]"]].to_numpy(),
        fitted.quantile(frame, [0.05, 0.5, 0.95]),
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.csv"]  # no temporary left


def random_mixture_run(folder: Path) -> Path:
    torch.manual_seed(3)
    module = MDNModule(in_dim=1, event_shape=[1], n_components=3, hidden_sizes=[4])
    rng = np.random.default_rng(3)
    module.x_scaler.fit(torch.as_tensor(rng.normal(2.0, 3.0, (100, 1))))
    module.y_scaler.fit(torch.as_tensor(rng.normal(5.0, 2.0, (100, 1))))
    return write_run(folder, module.eval(), ["t"], ["y"])


def test_mixture_quantities_csv_and_npz_round_trip(tmp_path, capsys):
    run = random_mixture_run(tmp_path / "run")
    x = np.linspace(-6.0, 10.0, 9)
    pd.DataFrame({"t": x}).to_csv(tmp_path / "x.csv", index=False)
    np.savez(tmp_path / "x.npz", x=x[:, None])
    what = "what=mean,sd,variance,quantiles,weights,modes"
    for src, dst in [("x.csv", "p.csv"), ("x.npz", "p.npz"), ("x.npz", "q.csv")]:
        args = [f"run={run}", f"input={tmp_path / src}", f"output={tmp_path / dst}", what]
        assert call(capsys, *args, "quantiles=0.1,0.9")[0] == 0
    fitted = mdnlab.load(run)
    csv = pd.read_csv(tmp_path / "p.csv")
    assert list(csv.columns[:7]) == [
        "t",
        "mean[0]",
        "sd[0]",
        "cov[0,0]",
        "quantile[0.1]",
        "quantile[0.9]",
        "weight[0]",
    ]
    np.testing.assert_array_equal(csv["mean[0]"], fitted.mean(x)[:, 0])
    np.testing.assert_allclose(csv["sd[0]"], np.sqrt(fitted.covariance(x)[:, 0, 0]), rtol=1e-15)
    np.testing.assert_array_equal(
        csv[["quantile[0.1]", "quantile[0.9]"]], fitted.quantile(x, [0.1, 0.9])
    )
    np.testing.assert_array_equal(csv[[f"weight[{k}]" for k in range(3)]], fitted.weights(x))
    modes, density = fitted.modes(x)
    for i in range(modes.shape[1]):  # a mode no row has is no column; one some rows lack is NaN
        if np.isnan(modes[:, i]).all():
            assert f"mode[{i}]" not in csv
        else:
            np.testing.assert_array_equal(csv[f"mode[{i}]"], modes[:, i])
            np.testing.assert_array_equal(csv[f"mode_density[{i}]"], density[:, i])
    with np.load(tmp_path / "p.npz") as archive:
        arrays = dict(archive)
    np.testing.assert_array_equal(arrays.pop("x"), x[:, None])
    assert arrays.pop("x_names").tolist() == ["t"]
    assert list(arrays) == list(csv.columns[1:])
    for name, values in arrays.items():
        np.testing.assert_array_equal(values, csv[name].to_numpy())
    from_npz = pd.read_csv(tmp_path / "q.csv")
    assert from_npz.columns[0] == "row" and from_npz.row.tolist() == list(range(9))
    pd.testing.assert_frame_equal(from_npz.drop(columns="row"), csv.drop(columns="t"))


def test_categorical_probabilities_and_samples(tmp_path, capsys):
    torch.manual_seed(4)
    module = MDNModule(
        in_dim=2,
        event_shape=[2],
        family="categorical",
        n_components=2,
        hidden_sizes=[3],
        n_classes=[3, 2],
    ).eval()
    labels = ["Conservative", "Labour", "Liberal Democrat"]
    run = write_run(
        tmp_path / "run", module, ["u", "v"], ["vote", "turnout"], None, {"vote": labels}
    )
    x = np.random.default_rng(4).normal(size=(6, 2))
    frame = pd.DataFrame(x, columns=["u", "v"])
    frame.to_csv(tmp_path / "x.csv", index=False)
    base = [f"run={run}", f"input={tmp_path / 'x.csv'}"]
    assert call(capsys, *base, f"output={tmp_path / 'p.csv'}", "what=probabilities")[0] == 0
    got = pd.read_csv(tmp_path / "p.csv")
    fitted = mdnlab.load(run)
    for d, (col, probs) in enumerate(fitted.class_probabilities(frame).items()):
        cols = [f"prob[{d},{c}]" for c in range(probs.shape[1])]
        np.testing.assert_allclose(got[cols].sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(got[cols].to_numpy(), probs.to_numpy(), err_msg=col)

    # Draws of two y columns do not fit one CSV column each: refused, pointing to .npz.
    code, _, err = call(capsys, *base, f"output={tmp_path / 's.csv'}", "what=samples")
    assert code == 2 and "write an .npz output" in err and not (tmp_path / "s.csv").exists()
    args = [*base, f"output={tmp_path / 's.npz'}", "what=samples", "n_samples=30", "seed=5"]
    assert call(capsys, *args)[0] == 0
    with np.load(tmp_path / "s.npz") as archive:
        draws = archive["samples"]
    assert draws.shape == (6, 30, 2) and draws.dtype == np.int64
    np.testing.assert_array_equal(draws, fitted.sample(x, 30, seed=5))

    # One class-coded y column: its CSV draws are its labels.
    one = MDNModule(
        in_dim=2,
        event_shape=[1],
        family="categorical",
        n_components=2,
        hidden_sizes=[3],
        n_classes=[3],
    ).eval()
    run1 = write_run(tmp_path / "run1", one, ["u", "v"], ["vote"], None, {"vote": labels})
    args = [f"run={run1}", base[1], f"output={tmp_path / 'l.csv'}", "what=samples", "n_samples=40"]
    assert call(capsys, *args)[0] == 0
    drawn = pd.read_csv(tmp_path / "l.csv")[[f"sample[{j}]" for j in range(40)]].to_numpy()
    codes = mdnlab.load(run1).sample(x, 40, seed=0)[:, :, 0]
    np.testing.assert_array_equal(drawn, np.asarray(labels, dtype=object)[codes])


def test_samples_are_reproducible(k1_run, k1_input, tmp_path, capsys):
    def draw(name, *extra):
        out = tmp_path / name
        args = [f"run={k1_run}", f"input={k1_input}", f"output={out}", "what=mean,samples"]
        code, stdout, err = call(capsys, *args, "n_samples=50", *extra)
        assert code == 0, err
        return out, stdout

    a, stdout = draw("a.csv", "seed=3")
    assert "1 quantity (mean[0]) and 50 samples per row (seed 3)" in stdout
    b, _ = draw("b.csv", "seed=3")
    c, _ = draw("c.csv", "seed=4")
    assert a.read_bytes() == b.read_bytes()
    table = pd.read_csv(a)
    assert list(table.columns) == ["t", "g", "mean[0]", *[f"sample[{j}]" for j in range(50)]]
    draws = table[[f"sample[{j}]" for j in range(50)]].to_numpy()
    other = pd.read_csv(c)[[f"sample[{j}]" for j in range(50)]].to_numpy()
    assert not np.any(draws == other)
    fitted = mdnlab.load(k1_run)
    frame = pd.read_csv(k1_input)
    np.testing.assert_array_equal(draws, fitted.sample(frame, 50, seed=3)[:, :, 0])
    hot, _ = draw("hot.npz", "seed=3", "temperature=2", "weight_temperature=0.5")
    with np.load(hot) as archive:
        samples, names = archive["samples"], archive["x_names"].tolist()
    assert samples.shape == (4, 50, 1) and names == ["t", "g=lo"]
    want = fitted.sample(frame, 50, temperature=2.0, weight_temperature=0.5, seed=3)
    np.testing.assert_array_equal(samples, want)
    # K = 1: temperature 2 doubles each draw's distance from the mean.
    mean = k1_reference(frame)[0]
    np.testing.assert_allclose(
        samples[:, :, 0] - mean[:, None], 2 * (draws - mean[:, None]), rtol=1e-10
    )


def test_bad_arguments_and_inputs(k1_run, k1_input, tmp_path, capsys):
    out = tmp_path / "out.csv"
    good = pd.read_csv(k1_input)

    def csv(name, frame):
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return path

    no_g = csv("no_g.csv", good.drop(columns="g"))
    text = csv("text.csv", good.assign(t=["1", "2", "two", "4"]))
    blank = csv("blank.csv", good.assign(t=[1.0, np.nan, 2.0, 3.0]))
    level = csv("level.csv", good.assign(g=["lo", "mid", "hi", "lo"]))
    np.savez(tmp_path / "wide.npz", x=np.zeros((3, 3)))
    np.savez(tmp_path / "nox.npz", z=np.zeros((3, 2)))
    np.savez(tmp_path / "nan.npz", x=np.array([[0.0, 1.0], [np.inf, 0.0]]))
    run, inp, output = f"run={k1_run}", f"input={k1_input}", f"output={out}"
    cases = [
        ([run, f"input={tmp_path / 'nope.csv'}", output], "input: no file at .*nope.csv"),
        (
            [run, f"input={no_g}", output],
            r"column\(s\) 'g' not in .*no_g.csv; expected the training x columns t, g",
        ),
        (
            [run, f"input={text}", output],
            r"text.csv: column 't', row 2 \(line 4\): value 'two' is not a finite",
        ),
        ([run, f"input={blank}", output], r"column 't', row 1 \(line 3\): value is missing"),
        (
            [run, f"input={level}", output],
            "level 'mid' was not seen in training; known levels: hi, lo",
        ),
        (
            [run, f"input={tmp_path / 'wide.npz'}", output],
            r"x has shape \(3, 3\); expected \(n, 2\): the model's inputs t, g=lo",
        ),
        ([run, f"input={tmp_path / 'nox.npz'}", output], "array x missing; the file holds z"),
        (
            [run, f"input={tmp_path / 'nan.npz'}", output],
            "array x, row 1, entry 0: value inf is not a finite",
        ),
        (
            [run, inp, output, "outptu=x.csv"],
            "unknown key 'outptu'; known keys: run, input, output, what",
        ),
        (
            [run, inp, output, "what=mean,median"],
            "what: 'median' is not known; choose from mean, sd, .*, samples",
        ),
        ([run, inp, output, "n_samples=10"], "n_samples= applies to what=samples only"),
        ([run, inp, output, "what=quantiles", "quantiles=[0.5,1.5]"], "expected probabilities in"),
        (
            [run, inp, output, "what=samples", "n_samples=0"],
            "n_samples=0: expected an integer >= 1",
        ),
        (
            [run, inp, f"output={tmp_path / 'big.npz'}", "what=samples", "n_samples=1000000000"],
            r"n_samples=1000000000: \d+ input rows x 1000000000 draws need .* GiB",
        ),
        ([run, inp, f"output={tmp_path / 'out.txt'}"], r"suffix '.txt'; expected .csv or .npz"),
        ([run, inp], "output= required"),
        ([run, inp, f"output={k1_input}"], "is the input file"),
        ([f"run={tmp_path / 'nowhere'}", inp, output], "no file or directory at"),
        ([run, inp, output, "what=probabilities"], "probabilities are for model=categorical"),
        ([run, inp, output, "mean"], "'mean' is not key=value"),
    ]
    out.write_text("an earlier output\n")  # an error leaves it as it was
    for args, pattern in cases:
        code, stdout, err = call(capsys, *args)
        assert code == 2 and stdout == "", args
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert re.search(pattern, err), (pattern, err)
    assert out.read_text() == "an earlier output\n"
    assert not (tmp_path / "out.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_nothing(k1_run, k1_input, tmp_path, capsys, monkeypatch):
    def half_then_fail(self, path, **kwargs):
        Path(path).write_text("t,g,mean[0]\n1.0,")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    out = tmp_path / "out.csv"
    code, _, err = call(capsys, f"run={k1_run}", f"input={k1_input}", f"output={out}")
    assert code == 2 and "No space left on device" in err and str(out) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1", "points.csv"]


def test_the_script_exits_2_with_one_line(k1_run, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"t": [1.0, 2.0]}).to_csv(bad, index=False)
    out = tmp_path / "out.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "src/predict.py", f"run={k1_run}", f"input={bad}", f"output={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert (
        done.stderr.startswith("error: input: column(s) 'g' not in ")
        and "Traceback" not in done.stderr
    )
    assert done.stderr.count("\n") == 1
    assert not out.exists()
