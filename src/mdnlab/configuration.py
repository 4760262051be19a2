"""The project's Hydra configuration composed outside a Hydra app: by the Python API
(``mdnlab.MDN``) and the benchmark runner, from the same ``conf/`` that ``src/train.py`` reads."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_train_config(overrides: list[str] | tuple[str, ...] = ()):
    """``conf/train.yaml`` with Hydra ``overrides``, as ``python src/train.py <overrides>``
    would see it (a DictConfig, not resolved)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))
