"""Train one MDN (or a sweep with -m): compose the config with Hydra, then mdnlab.pipeline.run.

python src/train.py data=mcycle model.n_components=3 seed=1
python src/train.py -m model.n_components=1,2,3,5 seed=0,1,2 hydra/launcher=joblib
"""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from mdnlab.errors import MdnlabError
    from mdnlab.interrupts import Interrupted, signals_as_interrupted
    from mdnlab.pipeline import run

    try:
        with signals_as_interrupted():
            metrics = run(cfg)
    except MdnlabError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except Interrupted as interrupt:
        print(f"interrupted by {interrupt}: the run is marked KILLED", file=sys.stderr)
        raise SystemExit(interrupt.exit_code) from None
    return metrics.get("val/nll", metrics["train/nll"])


if __name__ == "__main__":
    main()
