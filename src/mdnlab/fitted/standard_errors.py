"""Delta-method standard errors of a loaded model's predictions, from the stored fit.

A run keeps its weights, its config (data file, columns, split, seed) and the penalty its
estimate minimised (``FittedModel.penalty``). The training split is rebuilt from the data file
exactly as training built it, and the run's own inference step (``pipeline.infer``: the
inverse Hessian and the sandwich, dense or matrix-free as the run's config says) is evaluated
at the user's x. A data file that changed since training shows as a gradient away from zero
at the stored weights, which the inference step warns about.
"""

from __future__ import annotations

import pandas as pd
import torch
from omegaconf import OmegaConf

from mdnlab.errors import MdnlabError
from mdnlab.fitted.distributions import FittedModelError
from mdnlab.fitted.schema import _first_line

SE_COLUMNS = ("se_hessian", "se_sandwich")


def delta_method_ses(model, inputs: torch.Tensor) -> pd.DataFrame:
    """Columns ``row``, ``quantity``, ``se_hessian``, ``se_sandwich`` at the rows of ``inputs``
    (the network's inputs, original units), for the quantities the inference step computes."""
    from mdnlab.pipeline import SplitTensors, infer, load_data

    if model.config is None:
        raise FittedModelError(
            "predict(se=True): this model was loaded from a bare checkpoint, without its run's "
            "config.yaml; the standard errors need the run's training data"
        )
    cfg = OmegaConf.create(model.config)
    if model.training is not None:  # fitted in memory (mdnlab.MDN): its own training rows
        x, y = model.training
        empty_x, empty_y = x[:0], y[:0]
        data = SplitTensors(
            {"train": x, "val": empty_x, "test": empty_x},
            {"train": y, "val": empty_y, "test": empty_y},
        )
    else:
        try:
            table, splits = load_data(cfg)
        except (MdnlabError, OSError) as err:
            raise FittedModelError(
                f"predict(se=True): the run's training data {cfg.data.path} could not be read "
                f"again ({_first_line(err)}); the standard errors need it (run from the "
                "directory the run was trained in, or restore the file)"
            ) from None
        data = SplitTensors.from_table(table, splits)
    cfg.inference.enabled = True
    penalty = model.penalty if model.penalty is not None else 0.0
    result = infer(
        cfg, model.module, data, inputs.numpy(), "", penalty, scale_penalty=model.scale_penalty
    )
    frame = result.predictions.rename(columns={"point": "row"})
    return frame[["row", "quantity", *SE_COLUMNS]]
