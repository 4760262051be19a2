"""Train one MDN (or a sweep with -m): compose the config with Hydra, then mdnlab.pipeline.run.

python src/train.py data=mcycle model.n_components=3 seed=1
python src/train.py -m model.n_components=1,2,3,5 seed=0,1,2 hydra/launcher=joblib
"""

import sys
import traceback

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from mdnlab.errors import MdnlabError
    from mdnlab.interrupts import Interrupted, signals_as_interrupted
    from mdnlab.pipeline import run
    from mdnlab.sweep import in_multirun, record_job_failure

    try:
        with signals_as_interrupted():
            metrics = run(cfg)
    except MdnlabError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        if not in_multirun():
            raise SystemExit(2) from None
        # A sweep goes on with its other jobs and lists the failures at the end (exit 1).
        record_job_failure(str(err))
        return float("nan")
    except Interrupted as interrupt:
        print(f"interrupted by {interrupt}: the run is marked KILLED", file=sys.stderr)
        raise SystemExit(interrupt.exit_code) from None
    except Exception as err:
        if not in_multirun():
            raise
        traceback.print_exc()
        record_job_failure(f"{type(err).__name__}: {err}")
        return float("nan")
    return metrics.get("val/nll", metrics.get("train/nll", float("nan")))  # nan: a DDP worker


if __name__ == "__main__":
    main()
