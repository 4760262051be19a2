"""Config values that need no data are refused before anything is read or logged: one line
naming the key, the value and what was expected; no MLflow store or run is created."""

from __future__ import annotations

import pytest
from conftest import run_cli
from test_pipeline_run import config

from mdnlab import config_checks
from mdnlab.errors import ConfigError
from mdnlab.pipeline import run


@pytest.mark.parametrize(
    "override, expected",
    [
        ("seed=abc", "seed='abc': expected an integer >= 0"),
        ("seed=-1", "seed=-1: expected an integer in [0, 4294967295]"),
        ("seed=4294967296", "seed=4294967296: expected an integer in [0, 4294967295]"),
        ("seed=1.5", "seed=1.5: expected an integer >= 0"),
        ("trainer.lr=-1", "trainer.lr=-1: expected a number > 0"),
        ("trainer.lr=0", "trainer.lr=0: expected a number > 0"),
        ("trainer.lr=abc", "trainer.lr='abc': expected a finite number"),
        ("trainer.lr=nan", "trainer.lr=nan: expected a finite number"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: expected an integer >= 1"),
        ("trainer.patience=-1", "trainer.patience=-1: expected an integer >= 1"),
        ("trainer.batch_size=0", "trainer.batch_size=0: expected an integer >= 1"),
        ("trainer.weight_decay=-0.1", "trainer.weight_decay=-0.1: expected a number >= 0"),
        ("logger.tracking_uri=foo://bar", "unsupported scheme 'foo'"),
        ("trainer.accelerator=tpu", "trainer.accelerator='tpu': expected one of cpu, gpu, auto"),
        ("rerun=maybe", "rerun='maybe': expected true or false"),
        ("threads=abc", "threads='abc': expected an integer >= 1"),
        ("threads=0", "threads=0: expected an integer >= 1"),
        ("train.polish=no", "train.polish='no': expected true or false"),
        ("train.polish_tol=abc", "train.polish_tol='abc': expected a finite number"),
        ("train.polish_max_iter=0", "train.polish_max_iter=0: expected an integer >= 1"),
        ("inference.params=foo", "inference.params='foo': expected one of all, head"),
        ("inference.chunk=0", "inference.chunk=0: expected an integer >= 1"),
        ("inference.eig_rtol=abc", "inference.eig_rtol='abc': expected a finite number"),
        ("inference.enabled=yes", "inference.enabled='yes': expected true or false"),
        ("inference.max_points=0", "inference.max_points=0: expected an integer >= 1"),
        ("data.path=???", "data.path is required and not set"),
    ],
)
def test_bad_values_stop_before_the_store_is_touched(tmp_path, tiny_csv, override, expected):
    with pytest.raises(ConfigError) as caught:
        run(config(tmp_path, tiny_csv, override))
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert not (tmp_path / "mlflow.db").exists()


def test_a_postgresql_store_without_its_driver_names_the_extra(monkeypatch):
    real = config_checks.importlib.util.find_spec
    monkeypatch.setattr(
        config_checks.importlib.util,
        "find_spec",
        lambda name: None if name.startswith("psycopg") else real(name),
    )
    with pytest.raises(
        ConfigError, match=r"needs the psycopg driver.*pip install -e '\.\[server\]'"
    ):
        config_checks.check_tracking_uri("postgresql://mlflow@127.0.0.1:5432/mlflow")
    config_checks.check_tracking_uri("sqlite:///mlflow.db")
    config_checks.check_tracking_uri("http://127.0.0.1:5000")
    config_checks.check_tracking_uri("/tmp/mlruns")


def test_the_command_line_gets_one_line_and_exit_2(tmp_path, tiny_csv):
    args = ["data=file", f"data.path={tiny_csv}", "data.x_cols=[x]", "data.y_cols=[y]", "seed=abc"]
    result = run_cli(args, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: seed='abc': expected an integer >= 0"]
    assert not (tmp_path / "mlflow.db").exists()


def test_a_gpu_run_without_cuda_says_so_before_the_store_is_touched(
    tmp_path, tiny_csv, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu: torch sees no CUDA device"):
        run(config(tmp_path, tiny_csv, "trainer.accelerator=gpu"))
    assert not (tmp_path / "mlflow.db").exists()


def test_accelerator_auto_on_a_cpu_only_machine_gives_the_cpu_numbers(tmp_path, tiny_csv):
    import torch

    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here; the CPU/GPU comparison is in docs/reliability.md")
    on_cpu = run(config(tmp_path / "cpu", tiny_csv, "trainer.accelerator=cpu"))
    on_auto = run(config(tmp_path / "auto", tiny_csv, "trainer.accelerator=auto"))
    assert on_auto["test/nll"] == on_cpu["test/nll"]
    assert on_auto["train/grad_norm"] == on_cpu["train/grad_norm"]
