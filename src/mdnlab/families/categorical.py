"""Categorical mixture components for D discrete targets: a latent-class regression.

Each target column holds 0-based class codes (text labels are encoded as the codes of their
sorted levels when the table is read). Component k is a product of independent categoricals
over the D variables, so the mixture

    q(y | x) = sum_k pi_k(x) prod_d p_kd(y_d | x)

can represent dependence between the variables through the latent class k.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.distributions import Categorical, Distribution, MixtureSameFamily
from torch.nn.functional import log_softmax, pad

from mdnlab.data.table import row_text
from mdnlab.errors import ConfigError, DataError
from mdnlab.families.base import Family
from mdnlab.scaling import IdentityScaler


class ProductCategorical(Distribution):
    """Independent categoricals over D variables: batch shape (..., K), event shape (D,).

    ``logits[d]`` has shape (..., K, C_d) (all C_d logits of variable d, any shift); the log
    pmf of codes y (float or integer, broadcastable to (..., K, D)) is
    sum_d log_softmax(logits[d])[y_d]. One tensor per variable rather than one padded tensor,
    so that variables with different class counts need no -inf padding (whose gradients can be
    NaN). No data-dependent control flow: it works under ``torch.func.vmap(grad(...))``.
    """

    arg_constraints: dict = {}
    has_enumerate_support = False

    def __init__(self, logits: list[torch.Tensor], validate_args: bool = False):
        self.logits = list(logits)
        batch_shape = self.logits[0].shape[:-1]
        super().__init__(batch_shape, torch.Size([len(self.logits)]), validate_args=False)

    @property
    def log_probs(self) -> list[torch.Tensor]:
        """Per variable d: (..., K, C_d) log class probabilities."""
        return [log_softmax(lg, dim=-1) for lg in self.logits]

    @property
    def probs(self) -> list[torch.Tensor]:
        return [lp.exp() for lp in self.log_probs]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        total = None
        for d, log_p in enumerate(self.log_probs):
            codes = value[..., d].long().expand(shape).unsqueeze(-1)
            term = torch.gather(log_p.expand(*shape, log_p.shape[-1]), -1, codes).squeeze(-1)
            total = term if total is None else total + term
        return total

    @torch.no_grad()
    def sample(self, sample_shape=()) -> torch.Tensor:
        draws = [
            Categorical(logits=lg, validate_args=False).sample(sample_shape) for lg in self.logits
        ]
        return torch.stack(draws, dim=-1).to(self.logits[0].dtype)

    def expand(self, batch_shape, _instance=None) -> ProductCategorical:
        batch_shape = torch.Size(batch_shape)
        return ProductCategorical([lg.expand(*batch_shape, lg.shape[-1]) for lg in self.logits])


class CategoricalFamily(Family):
    """Component k: independent categoricals p_kd(. | x), d = 1..D (latent-class regression).

    ``event_shape`` is (D,); variable d has ``n_classes[d]`` = C_d >= 2 classes, coded
    0..C_d - 1. Raw layout per component: for d = 0..D-1 in turn, the C_d - 1 free logits of
    classes 0..C_d - 2 of variable d; the logit of the last class C_d - 1 is fixed at 0 (as the
    K-th gating logit is), which removes softmax's shift invariance from the Hessian. So
    ``params_per_component`` = sum_d (C_d - 1).

    With D = 1 a mixture of categoricals is again a categorical: any K collapses to one
    categorical with probabilities sum_k pi_k p_k. That is allowed (the predicted
    probabilities are fine), but K > 1 then over-parameterises the model and its parameters are
    not identified. With D = 2 the latent classes are not identified at a single x (more
    parameters than cells of the joint table); a regression can still identify them through
    their x-dependence (``synth_latent_class`` gives a well-conditioned Hessian). The reported
    quantities ``prob[d,c]`` (marginal class probabilities) are identified in every case.

    Targets are not rescaled (``IdentityScaler``): the NLL is in nats per row of the pmf.
    """

    name = "categorical"
    text_targets = True

    def __init__(
        self,
        n_components: int,
        event_shape: tuple[int, ...],
        n_classes: list[int] | None = None,
    ):
        super().__init__(n_components, event_shape)
        if len(self.event_shape) != 1:
            raise ConfigError(
                f"model=categorical models D class-coded columns (event shape (D,)); got event "
                f"shape {self.event_shape}"
            )
        self.dim = self.event_shape[0]
        if n_classes is None:
            raise ConfigError(
                "model.n_classes is required for model=categorical: a list with the number of "
                "classes of each y column (null in the config takes it from the data)"
            )
        n_classes = [int(c) for c in n_classes]
        if len(n_classes) != self.dim:
            raise ConfigError(
                f"model.n_classes has {len(n_classes)} entries ({n_classes}) but there are "
                f"{self.dim} y columns; expected one class count per column"
            )
        small = [c for c in n_classes if c < 2]
        if small:
            raise ConfigError(
                f"model.n_classes = {n_classes}: every column needs at least 2 classes, got "
                f"{small[0]}"
            )
        self.n_classes = n_classes

    @property
    def params_per_component(self) -> int:
        return sum(c - 1 for c in self.n_classes)

    def component_distribution(self, raw: torch.Tensor) -> ProductCategorical:
        logits, start = [], 0
        for c in self.n_classes:
            logits.append(pad(raw[..., start : start + c - 1], (0, 1)))
            start += c - 1
        return ProductCategorical(logits)

    def make_scaler(self) -> IdentityScaler:
        return IdentityScaler()

    def scale_penalty(
        self, raw: torch.Tensor, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """sum_k sum_d KL(uniform_{C_d} || p_kd(. | x)) = sum_k sum_d [-log C_d - mean_c log
        p_kdc] at each row's x: minus the log of a symmetric Dirichlet density on each
        component's class probabilities, up to a constant (Dirichlet pseudo-counts: with weight
        c / n per row, c pseudo-observations spread evenly over each variable's classes). It is
        0 at uniform probabilities and grows without bound as any probability runs to 0, so a
        class cannot be given probability 0 or 1 on rows the data separate."""
        k = self.n_components
        components = raw[:, k - 1 :].reshape(raw.shape[0], k, -1)
        total = raw.new_zeros(raw.shape[0])
        for c, log_p in zip(
            self.n_classes, self.component_distribution(components).log_probs, strict=True
        ):
            total = total + (-math.log(c) - log_p.mean(dim=-1)).sum(dim=-1)
        return total

    @staticmethod
    def marginal_probs(mixture: MixtureSameFamily) -> list[torch.Tensor]:
        """Per variable d: (batch, C_d) marginal class probabilities sum_k pi_k p_kd."""
        weights = mixture.mixture_distribution.probs  # (batch, K)
        return [
            torch.einsum("bk,bkc->bc", weights, p) for p in mixture.component_distribution.probs
        ]

    def quantities(
        self, mixture: MixtureSameFamily, scaler: IdentityScaler
    ) -> dict[str, torch.Tensor]:
        out = {}
        for d, probs in enumerate(self.marginal_probs(mixture)):
            for c in range(probs.shape[1]):
                out[f"prob[{d},{c}]"] = probs[:, c]
        return out

    def component_quantities(
        self, mixture: MixtureSameFamily, scaler: IdentityScaler
    ) -> dict[str, torch.Tensor]:
        """``component_prob[{k},d,c]``: component k's probability of class c of variable d."""
        out = {}
        for d, probs in enumerate(mixture.component_distribution.probs):  # (batch, K, C_d)
            for c in range(probs.shape[-1]):
                out[f"component_prob[{{k}},{d},{c}]"] = probs[..., c]
        return out

    def identifiability_notes(self) -> list[str]:
        if self.dim == 1 and self.n_components > 1:
            return [
                f"K = {self.n_components} > 1 is not identified: a mixture of categoricals on one "
                "variable is one categorical (probabilities sum_k pi_k p_k), so the mixing "
                "weights and components are not identified; only prob[0,c] is"
            ]
        return []

    def evaluation_metrics(
        self, mixture: MixtureSameFamily, y_standardised: torch.Tensor, scaler=None
    ) -> dict[str, float]:
        """Per variable: ``accuracy`` (the most probable class is the observed one) and
        ``brier`` (mean over rows of sum_c (p_c - 1{y = c})^2, in [0, 2]), from the marginal
        class probabilities. With D = 1 the names are ``accuracy`` and ``brier``; with D > 1
        ``accuracy_d`` and ``brier_d``, d the 0-based position in ``data.y_cols`` (MLflow
        metric names allow no brackets)."""
        out = {}
        with torch.no_grad():
            for d, probs in enumerate(self.marginal_probs(mixture)):
                codes = y_standardised[:, d].long()
                onehot = (codes[:, None] == torch.arange(probs.shape[1])).to(probs.dtype)
                accuracy = (probs.argmax(dim=1) == codes).to(probs.dtype).mean()
                brier = ((probs - onehot) ** 2).sum(dim=1).mean()
                suffix = "" if self.dim == 1 else f"_{d}"
                out[f"accuracy{suffix}"] = float(accuracy)
                out[f"brier{suffix}"] = float(brier)
        return out

    # --- data hooks ----------------------------------------------------------------------------
    @classmethod
    def prepare_targets(cls, y: np.ndarray, source: str, columns: list[str]) -> np.ndarray:
        if y.ndim != 2:
            raise DataError(
                f"{source}: model=categorical models class-coded columns y of shape (n, D); got "
                f"an array of shape {tuple(y.shape)} (matrix targets need model=wishart)"
            )
        y = np.asarray(y, dtype=np.float64)
        for bad, what in (
            (y != np.round(y), "is not an integer class code"),
            (y < 0, "is a negative class code"),
        ):
            rows, cols = np.nonzero(bad)
            if rows.size:
                row, col = int(rows[0]), int(cols[0])
                raise DataError(
                    f"{source}: y column {columns[col]!r}, {row_text(row, source)}: value "
                    f"{float(y[row, col])!r} {what} ({rows.size} such value"
                    f"{'s' if rows.size > 1 else ''} in all); model=categorical needs integer "
                    "class codes 0..C-1 or text labels (real-valued y needs a continuous family "
                    "such as model=gaussian)"
                )
        return y

    @classmethod
    def options_from_data(
        cls, y: np.ndarray, columns: list[str], y_levels: dict[str, list[str]], source: str
    ) -> dict:
        """``{"n_classes": [C_d]}``: the number of levels of a text column, else the largest
        code + 1. Every class 0..C_d - 1 needs at least 2 rows so that it can appear in
        training (stratified splits keep one of each in the training split)."""
        n_classes = []
        for d, col in enumerate(columns):
            levels = y_levels.get(col)
            c = len(levels) if levels else int(y[:, d].max()) + 1
            if c < 2:
                raise DataError(
                    f"{source}: y column {col!r} has a single class ({_label(0, levels)}); "
                    "model=categorical needs at least 2 classes per column"
                )
            counts = np.bincount(y[:, d].astype(np.int64), minlength=c)
            rare = np.flatnonzero(counts < 2)
            if rare.size:
                k = int(rare[0])
                raise DataError(
                    f"{source}: y column {col!r}, class {_label(k, levels)} has {int(counts[k])} "
                    f"row{'' if counts[k] == 1 else 's'}; every class needs at least 2 rows so "
                    "that it can appear in training (merge or drop rare classes, or recode the "
                    "codes as 0..C-1 without gaps)"
                )
            n_classes.append(c)
        return {"n_classes": n_classes}

    @classmethod
    def check_codes(
        cls,
        y: np.ndarray,
        n_classes: list[int],
        columns: list[str],
        source: str,
        y_levels: dict[str, list[str]] | None = None,
    ) -> None:
        """Codes against a user-set ``model.n_classes``: one count per column, each >= 2, and
        every code of column d below n_classes[d]; errors name the column, row and value."""
        n_classes = [int(c) for c in n_classes]
        if len(n_classes) != y.shape[1]:
            raise ConfigError(
                f"model.n_classes has {len(n_classes)} entries ({n_classes}) but data.y_cols "
                f"names {y.shape[1]} columns; expected one class count per column"
            )
        y_levels = y_levels or {}
        for d, (col, c) in enumerate(zip(columns, n_classes, strict=True)):
            if c < 2:
                raise ConfigError(f"model.n_classes[{d}] = {c}; every column needs at least 2")
            rows = np.flatnonzero(y[:, d] >= c)
            if rows.size:
                row = int(rows[0])
                code = int(y[row, d])
                raise DataError(
                    f"{source}: y column {col!r}, {row_text(row, source)}: class "
                    f"{_label(code, y_levels.get(col))} is beyond model.n_classes[{d}] = {c} "
                    f"(codes 0..{c - 1}); raise model.n_classes or set it to null to take it "
                    "from the data"
                )

    @classmethod
    def check_options(
        cls,
        y: np.ndarray,
        columns: list[str],
        y_levels: dict[str, list[str]],
        source: str,
        options: dict,
    ) -> None:
        """Check options the user set (not taken from the data) against the targets."""
        if options.get("n_classes") is not None:
            cls.check_codes(y, options["n_classes"], columns, source, y_levels)

    @classmethod
    def strata(cls, y: np.ndarray) -> np.ndarray:
        """The joint combination of the D codes of each row, as 0-based labels."""
        return np.unique(y, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _label(code: int, levels: list[str] | None) -> str:
    if levels and 0 <= code < len(levels):
        return f"{levels[code]!r} (code {code})"
    return str(code)
