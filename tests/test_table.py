"""Data validation in ``read_table``: every error names the file, column and row at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mdnlab.data.table import encode_inputs, read_table
from mdnlab.errors import DataError

torch.set_num_threads(1)

N = 12


def data_error(call, *fragments: str) -> str:
    """Run ``call``, expect a DataError whose message holds every fragment; return the message."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in message
    return message


def write_csv(path: Path, columns: dict[str, list[str]]) -> Path:
    names = list(columns)
    lines = [",".join(names)]
    for r in range(len(columns[names[0]])):
        lines.append(",".join(str(columns[c][r]) for c in names))
    path.write_text("\n".join(lines) + "\n")
    return path


def good_columns(n: int = N) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    return {
        "x1": [f"{v:.6f}" for v in rng.normal(size=n)],
        "x2": [f"{v:.6f}" for v in rng.normal(size=n)],
        "y1": [f"{v:.6f}" for v in rng.normal(size=n)],
        "y2": [f"{v:.6f}" for v in rng.normal(size=n)],
    }


def test_good_csv_is_read_as_written(tmp_path):
    path = write_csv(tmp_path / "d.csv", good_columns())
    table = read_table(path, x_cols=["x2", "x1"], y_cols=["y1", "y2"])
    frame = pd.read_csv(path)
    np.testing.assert_array_equal(table.x, frame[["x2", "x1"]].to_numpy(dtype=np.float64))
    np.testing.assert_array_equal(table.y, frame[["y1", "y2"]].to_numpy(dtype=np.float64))
    assert table.x_names == ["x2", "x1"] and table.y_names == ["y1", "y2"]
    assert table.n_rows == N and table.x.dtype == np.float64 and table.encodings == {}


@pytest.mark.parametrize(
    ("bad", "shown"),
    [("nan", None), ("NaN", None), ("", None), ("inf", "inf"), ("-inf", "-inf"), ("abc", "'abc'")],
)
def test_bad_value_in_y_column_names_file_column_row_and_line(tmp_path, bad, shown):
    columns = good_columns()
    columns["y2"][3] = bad
    path = write_csv(tmp_path / "bad.csv", columns)
    message = data_error(
        lambda: read_table(path, ["x1", "x2"], ["y1", "y2"]), str(path), "'y2'", "row 3", "line 5"
    )
    if shown is not None:
        assert shown in message


def test_bad_value_in_numeric_x_column(tmp_path):
    columns = good_columns()
    columns["x1"][7] = "inf"
    path = write_csv(tmp_path / "bad.csv", columns)
    data_error(lambda: read_table(path, ["x1", "x2"], ["y1"]), str(path), "'x1'", "row 7", "line 9")


def test_first_bad_row_is_reported_with_the_count(tmp_path):
    columns = good_columns()
    columns["y1"][5] = "inf"
    columns["y1"][9] = "inf"
    path = write_csv(tmp_path / "bad.csv", columns)
    data_error(lambda: read_table(path, ["x1"], ["y1"]), "row 5", "line 7", "2 such rows")


def test_misspelt_column_is_named_and_existing_columns_listed(tmp_path):
    path = write_csv(tmp_path / "d.csv", good_columns())
    message = data_error(
        lambda: read_table(path, ["x1"], ["y1", "y_2"]), "'y_2'", str(path), "data.y_cols"
    )
    for col in ["x1", "x2", "y1", "y2"]:
        assert col in message.split("columns are:")[1]
    data_error(lambda: read_table(path, ["X1"], ["y1"]), "'X1'", "data.x_cols", "x1, x2, y1, y2")


@pytest.mark.parametrize("missing", ["x", "y"])
def test_csv_without_column_lists_names_the_columns(tmp_path, missing):
    path = write_csv(tmp_path / "d.csv", good_columns())
    x_cols = None if missing == "x" else ["x1"]
    y_cols = None if missing == "y" else ["y1"]
    data_error(
        lambda: read_table(path, x_cols, y_cols),
        f"data.{missing}_cols",
        str(path),
        "x1, x2, y1, y2",
    )


def test_too_few_rows(tmp_path):
    path = write_csv(tmp_path / "d.csv", good_columns(n=5))
    message = data_error(
        lambda: read_table(path, ["x1"], ["y1"], min_rows=8), "5 rows", "8", str(path)
    )
    assert "min_rows" in message
    assert read_table(path, ["x1"], ["y1"], min_rows=5).n_rows == 5


def test_constant_x_column_is_named(tmp_path):
    columns = good_columns()
    columns["x2"] = ["2.5"] * N
    path = write_csv(tmp_path / "d.csv", columns)
    data_error(
        lambda: read_table(path, ["x1", "x2"], ["y1", "y2"]),
        "x column 'x2'",
        "constant",
        str(path),
    )


def test_constant_y_column_is_named_by_the_gaussian_family(tmp_path):
    from mdnlab.families.gaussian import GaussianFamily

    columns = good_columns()
    columns["y2"] = ["2.5"] * N
    path = write_csv(tmp_path / "d.csv", columns)
    table = read_table(path, ["x1", "x2"], ["y1", "y2"])  # a constant y is a family matter
    data_error(
        lambda: GaussianFamily.prepare_targets(table.y, table.source, table.y_names),
        "y column 'y2'",
        "constant",
        str(path),
    )


def test_text_y_columns_become_sorted_codes_when_asked(tmp_path):
    columns = good_columns()
    labels = ["b", "a", "c", "a"] * (N // 4)
    columns["y2"] = labels
    path = write_csv(tmp_path / "d.csv", columns)
    table = read_table(path, ["x1", "x2"], ["y1", "y2"], text_y=True)
    assert table.y_levels == {"y2": ["a", "b", "c"]}
    np.testing.assert_array_equal(table.y[:, 1], [{"a": 0, "b": 1, "c": 2}[v] for v in labels])
    data_error(lambda: read_table(path, ["x1", "x2"], ["y1", "y2"]), "column 'y2'", "finite number")


def test_text_x_column_is_one_hot_with_first_sorted_level_as_reference(tmp_path):
    rng = np.random.default_rng(3)
    columns = good_columns(n=30)
    columns["colour"] = list(rng.choice(["red", "green", "blue", "amber"], size=30))
    path = write_csv(tmp_path / "d.csv", columns)
    table = read_table(path, ["x1", "colour"], ["y1"])
    frame = pd.read_csv(path)
    dummies = pd.get_dummies(frame["colour"], drop_first=True, dtype=np.float64)
    assert table.x_names == ["x1"] + [f"colour={level}" for level in dummies.columns]
    assert table.x_names[1:] == [
        "colour=blue",
        "colour=green",
        "colour=red",
    ]  # "amber" is reference
    np.testing.assert_array_equal(table.x[:, 0], frame["x1"].to_numpy())
    np.testing.assert_array_equal(table.x[:, 1:], dummies.to_numpy())
    assert table.encodings == {"colour": sorted(set(columns["colour"]))}


def test_encode_inputs_with_training_levels_rejects_an_unseen_level():
    frame = pd.DataFrame({"x1": [0.1, 0.2, 0.3, 0.4], "colour": ["red", "blue", "purple", "red"]})
    encodings = {"colour": ["blue", "green", "red"]}
    data_error(
        lambda: encode_inputs(frame, ["x1", "colour"], "points.csv", encodings=encodings),
        "'purple'",
        "'colour'",
        "row 2",
        "line 4",
        "blue, green, red",
    )
    # Known levels only: encoded with the training levels, even when one level is absent.
    ok = frame.iloc[[0, 1, 3]].reset_index(drop=True)
    x, names, _ = encode_inputs(ok, ["x1", "colour"], "points.csv", encodings=encodings)
    assert names == ["x1", "colour=green", "colour=red"]
    np.testing.assert_array_equal(x, [[0.1, 0.0, 1.0], [0.2, 0.0, 0.0], [0.4, 0.0, 1.0]])


def test_missing_value_in_text_column(tmp_path):
    columns = good_columns()
    columns["colour"] = ["a", "b"] * (N // 2)
    columns["colour"][6] = ""
    path = write_csv(tmp_path / "d.csv", columns)
    data_error(
        lambda: read_table(path, ["colour"], ["y1"]), "'colour'", "row 6", "line 8", "missing"
    )


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_good_vector_and_matrix_targets(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 2))
    y = rng.normal(size=N)
    table = read_table(write_npz(tmp_path / "v.npz", x=x, y=y))
    assert table.y.shape == (N, 1) and table.x_names == ["x0", "x1"] and table.y_names == ["y0"]
    np.testing.assert_array_equal(table.y[:, 0], y)
    a = rng.normal(size=(N, 3, 3))
    spd = a @ np.swapaxes(a, 1, 2) + np.eye(3)
    table = read_table(write_npz(tmp_path / "m.npz", x=x[:, 0], y=spd))
    assert table.y.ndim == 3 and table.y.shape == (N, 3, 3)
    assert table.x.shape == (N, 1)
    assert table.y_names == ["y[0,0]", "y[1,0]", "y[1,1]", "y[2,0]", "y[2,1]", "y[2,2]"]
    np.testing.assert_array_equal(table.y, spd)


def test_npz_errors(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N, 2))
    path = write_npz(tmp_path / "noy.npz", x=x, z=x)
    data_error(lambda: read_table(path), str(path), "y", "missing", "x, z")
    path = write_npz(tmp_path / "rows.npz", x=x, y=rng.normal(size=N + 1))
    data_error(lambda: read_table(path), str(path), f"{N} rows", f"{N + 1}")
    path = write_npz(tmp_path / "4d.npz", x=x, y=rng.normal(size=(N, 2, 2, 2)))
    data_error(lambda: read_table(path), str(path), "(12, 2, 2, 2)")
    x_bad = x.copy()
    x_bad[4, 1] = np.inf
    path = write_npz(tmp_path / "xinf.npz", x=x_bad, y=rng.normal(size=N))
    data_error(lambda: read_table(path), str(path), "array x", "row 4", "entry 1")
    y_bad = rng.normal(size=(N, 2, 2))
    y_bad[9, 1, 0] = np.nan
    path = write_npz(tmp_path / "ynan.npz", x=x, y=y_bad)
    data_error(lambda: read_table(path), str(path), "array y", "row 9", "entry 2")
    path = write_npz(tmp_path / "names.npz", x=x, y=rng.normal(size=N))
    data_error(lambda: read_table(path, x_cols=["a", "b", "c"]), "3 columns", "has 2")


def test_missing_file_and_wrong_suffix(tmp_path):
    missing = tmp_path / "absent.csv"
    data_error(lambda: read_table(missing, ["x"], ["y"]), str(missing), "no file")
    other = tmp_path / "data.txt"
    other.write_text("x,y\n1,2\n")
    data_error(lambda: read_table(other, ["x"], ["y"]), str(other), "'.txt'", ".csv or .npz")
    garbage = tmp_path / "bad.npz"
    garbage.write_bytes(b"this is not a zip archive")
    data_error(lambda: read_table(garbage), str(garbage))


def test_numeric_x_column_with_a_stray_word_is_an_error_not_text(tmp_path):
    columns = good_columns()
    columns["x1"][-1] = "oops"
    path = write_csv(tmp_path / "typo.csv", columns)
    data_error(lambda: read_table(path, ["x1"], ["y1"]), "'x1'", "'oops'", f"row {N - 1}")


def test_single_level_text_x_column_is_constant(tmp_path):
    columns = good_columns()
    columns["x1"] = ["a"] * N
    path = write_csv(tmp_path / "one.csv", columns)
    data_error(lambda: read_table(path, ["x1"], ["y1"]), "'x1'", "constant")


def test_npz_y_cols_must_match_y(tmp_path):
    rng = np.random.default_rng(0)
    path = write_npz(tmp_path / "a.npz", x=rng.normal(size=(12, 2)), y=rng.normal(size=(12, 2)))
    for names in (["a", "b", "c"], ["a"]):
        data_error(
            lambda names=names: read_table(path, None, names), "data.y_cols", str(len(names))
        )
