"""Bad input at the training entry point, one case per row of docs/reliability.md's table:
each stops with one line naming the file, column, row or key at fault and what was expected,
before any MLflow store or run is created. (Config values that need no data:
tests/test_config_checks.py; the command line's exit code 2: tests/test_cli*.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TINY
from hydra import compose, initialize_config_dir

from mdnlab.errors import MdnlabError
from mdnlab.pipeline import run


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    good = pd.DataFrame({"x": rng.uniform(size=50), "y": rng.normal(size=50)})
    good.to_csv(d / "good.csv", index=False)
    (d / "empty.csv").write_text("")
    good.head(1).to_csv(d / "one.csv", index=False)
    text = good.astype(object)
    text.loc[7, "y"] = "abc"
    text.to_csv(d / "text.csv", index=False)
    missing = good.copy()
    missing.loc[3, "x"] = np.nan
    missing.to_csv(d / "nan.csv", index=False)
    infinite = good.copy()
    infinite.loc[4, "y"] = np.inf
    infinite.to_csv(d / "inf.csv", index=False)
    classes = pd.DataFrame({"x": rng.uniform(size=50), "y": np.arange(50) % 3})
    classes.to_csv(d / "classes.csv", index=False)
    matrices = np.stack([np.eye(3)] * 40)
    matrices[5] = np.diag([1.0, -1.0, 1.0])
    np.savez(d / "not_spd.npz", x=rng.uniform(size=(40, 1)), y=matrices)
    np.savez(d / "shape.npz", x=rng.uniform(size=(40, 1)), y=rng.normal(size=(40, 3, 2)))
    np.savez(d / "objects.npz", x=np.array([[1.0], ["a"]] * 20, dtype=object), y=np.ones(40))
    np.savez(d / "complex.npz", x=rng.uniform(size=(40, 1)) + 1j, y=rng.normal(size=40))
    return d


NPZ = ["data.x_cols=null", "data.y_cols=null"]
CASES = {
    "nan": (["data.path={d}/nan.csv"], "nan.csv: column 'x', row 3 (line 5): value is missing"),
    "inf": (["data.path={d}/inf.csv"], "inf.csv: column 'y', row 4 (line 6): value"),
    "empty_file": (["data.path={d}/empty.csv"], "empty.csv: not a readable CSV file"),
    "object_arrays": (
        ["data.path={d}/objects.npz", *NPZ],
        "objects.npz: arrays x and y must hold numbers",
    ),
    "complex_values": (
        ["data.path={d}/complex.npz", *NPZ],
        "complex.npz: array x has dtype complex128; expected real numbers",
    ),
    "one_row": (["data.path={d}/one.csv"], "one.csv: 1 rows; at least 10 are needed"),
    "text_in_numeric_column": (
        ["data.path={d}/text.csv"],
        "text.csv: column 'y', row 7 (line 9): value 'abc' is not a finite number",
    ),
    "unknown_column": (
        ["data.path={d}/good.csv", "data.x_cols=[z]"],
        "data.x_cols: column(s) 'z' not in",
    ),
    "class_code_out_of_range": (
        ["data.path={d}/classes.csv", "model=categorical", "model.n_classes=[2]"],
        "row 2 (line 4): class 2 is beyond model.n_classes[0] = 2",
    ),
    "not_spd_matrix": (
        ["data.path={d}/not_spd.npz", "model=wishart", *NPZ],
        "not_spd.npz: y, row 5: the matrix is not positive definite",
    ),
    "wrong_shape": (
        ["data.path={d}/shape.npz", "model=wishart", *NPZ],
        "got shape (40, 3, 2)",
    ),
    "k_below_1": (["model.n_components=0"], "model.n_components must be at least 1, got 0"),
    "fraction_out_of_range": (
        ["data.test_fraction=-0.1"],
        "data.test_fraction must be in [0, 1), got -0.1",
    ),
    "missing_data_path": (["data.path={d}/nope.csv"], "data.path: no file at"),
    "missing_points_file": (
        ["inference.points={d}/nope.csv"],
        "inference.points: no file at",
    ),
    "negative_penalty": (["train.penalty=-1"], "train.penalty must be a finite number >= 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_before_any_run(files, tmp_path, case):
    overrides, expected = CASES[case]
    store = tmp_path / "mlflow.db"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=file",
                f"data.path={files}/good.csv",
                "data.x_cols=[x]",
                "data.y_cols=[y]",
                f"logger.tracking_uri=sqlite:///{store}",
                *TINY,
                *(o.format(d=files) for o in overrides),
            ],
        )
    with pytest.raises(MdnlabError) as caught:
        run(cfg)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert not store.exists()
