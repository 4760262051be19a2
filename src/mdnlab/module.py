"""The LightningModule: family-agnostic, one shared step for train, validation and test.

The module takes plain numbers (sizes, K, family name) and builds its networks itself, so
``MDNModule.load_from_checkpoint(path)`` needs nothing else. Input and target scalers are
buffers in the checkpoint; ``log_prob`` and ``nll`` take and return original units.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.distributions import MixtureSameFamily

from mdnlab.errors import ConfigError, TrainingError
from mdnlab.estimation.scale_reference import residual_variance
from mdnlab.families import build_family
from mdnlab.nets import mlp
from mdnlab.scaling import AffineScaler

# none: components keep the labels the fit gave them; ordered: relabelled after each fit in the
# canonical order (diagnostics/labels.py), and per-component quantities are reported.
IDENTIFIABILITY = ("none", "ordered")
# The scale penalty's reference stays at least this many times model.min_scale (in scale).
REFERENCE_FLOOR_SCALES = 10.0


class MDNModule(pl.LightningModule):
    def __init__(
        self,
        in_dim: int,
        event_shape: tuple[int, ...] | list[int],
        family: str = "gaussian",
        n_components: int = 3,
        hidden_sizes: tuple[int, ...] | list[int] = (32,),
        activation: str = "tanh",
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        identifiability: str = "ordered",
        **family_options,
    ):
        super().__init__()
        if identifiability not in IDENTIFIABILITY:
            raise ConfigError(
                f"model.identifiability={identifiability!r}; expected one of "
                f"{', '.join(IDENTIFIABILITY)}"
            )
        # Plain Python values only, so that checkpoints load with torch's weights_only default.
        event_shape = [int(v) for v in event_shape]
        hidden_sizes = [int(h) for h in hidden_sizes]
        self.save_hyperparameters()
        self.family = build_family(family, n_components, tuple(event_shape), **family_options)
        self.net = mlp(in_dim, list(hidden_sizes), self.family.n_raw_outputs, activation)
        self.x_scaler = AffineScaler(in_dim)
        self.y_scaler = self.family.make_scaler()
        # The scale penalty's reference in standardised units (``fit_scale_reference``; ones:
        # the marginal scale), saved with the weights.
        self.register_buffer("scale_reference", torch.ones(self.family.reference_size))
        self.double()
        self.epoch_history: dict[str, list[float]] = {"train/nll_epoch": [], "val/nll_epoch": []}
        # The scale penalty's weight per row, train.scale_penalty / n_train, for the curvature
        # of the training objective (``objective_log_prob``); 0: none. Not a hyperparameter: the
        # step that evaluates the objective sets it.
        self.scale_weight = 0.0
        self._epoch_sums: dict[str, list] = {}

    # --- the model ---------------------------------------------------------------------------
    def mixture(self, x: torch.Tensor) -> MixtureSameFamily:
        """q(y_standardised | x) for inputs in original units."""
        return self.family.mixture(self.net(self.x_scaler(x)))

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log q(y | x) per sample, in nats, in the original units of y."""
        return self.objective_log_prob(x, y, scale_weight=0.0)

    def objective_log_prob(
        self, x: torch.Tensor, y: torch.Tensor, scale_weight: float | None = None
    ) -> torch.Tensor:
        """Minus each row's term of the training objective's data part: log q(y | x) less the
        row's share of the scale penalty, ``scale_weight`` (default: the module's) times the
        penalty at x; log q itself when the weight is 0. One pass through the network, as the
        inference's hooks expect."""
        weight = self.scale_weight if scale_weight is None else scale_weight
        raw = self.net(self.x_scaler(x))
        log_q = self.family.mixture(raw).log_prob(self.y_scaler(y))
        log_q = log_q + self.y_scaler.log_abs_det_jacobian()
        if not weight:
            return log_q
        return log_q - weight * self.family.scale_penalty(raw, self.scale_reference)

    def fit_scale_reference(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Set the scale penalty's reference to the variance of the training rows (x, y in
        original units) around this network's mean at its current weights
        (``mdnlab.estimation.scale_reference``), per coordinate of y. A family whose penalty
        has no reference is left as it is."""
        if self.scale_reference.numel() == 0:
            return
        floor = (REFERENCE_FLOOR_SCALES * max(getattr(self.family, "min_scale", 1e-3), 1e-6)) ** 2
        self.scale_reference.copy_(residual_variance(self, x, y, floor))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the reference existed: the marginal scale, as they were fitted
        state_dict.setdefault(prefix + "scale_reference", self.scale_reference.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood, nats per sample, original units."""
        return -self.log_prob(x, y).mean()

    @property
    def ordered(self) -> bool:
        return self.hparams.get("identifiability", "ordered") == "ordered"

    def quantities(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mixture's identifiable summaries; with ordered components (K > 1) also each
        component's weight ``weight[k]`` and own summaries (``component_mean[k,j]``, ...)."""
        mixture = self.mixture(x)
        out = self.family.quantities(mixture, self.y_scaler)
        if self.ordered and self.family.n_components > 1:
            summaries = self.component_summaries(mixture)
            for k in range(self.family.n_components):
                out |= {name.format(k=k): values[:, k] for name, values in summaries.items()}
        return out

    def component_summaries(self, mixture: MixtureSameFamily) -> dict[str, torch.Tensor]:
        """``weight[{k}]`` and the family's component summaries, each (batch, K)."""
        summaries = {"weight[{k}]": mixture.mixture_distribution.probs}
        return summaries | self.family.component_quantities(mixture, self.y_scaler)

    # --- Lightning -----------------------------------------------------------------------------
    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        loss = self.nll(x, y)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{stage} NLL became {loss.item()} at epoch {self.current_epoch}; "
                "lower trainer.lr or raise model.min_scale"
            )
        total, count = self._epoch_sums.setdefault(stage, [loss.new_zeros(()), 0])
        self._epoch_sums[stage] = [total + loss.detach() * x.shape[0], count + x.shape[0]]
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        loss = self._step(batch, "val")
        self.log("val/nll", loss, on_epoch=True, prog_bar=False, batch_size=batch[0].shape[0])

    def _close_epoch(self, stage: str) -> None:
        if stage in self._epoch_sums:
            total, count = self._epoch_sums.pop(stage)
            self.epoch_history[f"{stage}/nll_epoch"].append(float(total) / count)

    def on_train_epoch_end(self) -> None:
        self._close_epoch("train")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._close_epoch("val")
        self._epoch_sums.pop("val", None)

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
