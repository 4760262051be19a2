"""``FittedModel``: the predictive distribution of a fitted MDN, in the original units of y.

x is a DataFrame with the training x columns (raw: text columns are one-hot encoded with the
training levels; other columns are ignored) or a numeric array (n, d) of the network's inputs
(a 1-d array when d = 1). Results are numpy arrays with the rows of x first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.distributions import Distribution

from mdnlab.families.categorical import CategoricalFamily
from mdnlab.families.gaussian import component_covariance, mixture_mean_and_covariance
from mdnlab.fitted import scalar
from mdnlab.fitted.distributions import FittedModelError, original_units, wishart_moments
from mdnlab.fitted.schema import Schema, encode_x, encode_y
from mdnlab.fitted.standard_errors import delta_method_ses
from mdnlab.sampling import seeded_sample

PREDICTABLE = ("mean", "sd", "variance", "quantiles", "probabilities", "weights", "modes")


class FittedModel:
    """A fitted MDN with its data schema; ``mdnlab.load(ref)`` makes one from a run."""

    def __init__(
        self,
        module,
        schema: Schema | None = None,
        config: dict | None = None,
        source: str | None = None,
        run_id: str | None = None,
        penalty: float | None = None,
        scale_penalty: float | None = None,
        training: tuple | None = None,
    ):
        self.module = module.eval()
        self.schema = schema or Schema()
        self.config = config
        self.source = source
        self.run_id = run_id
        self.penalty = penalty  # the training objective's lambda (None: unknown)
        self.scale_penalty = scale_penalty  # its scale-penalty strength c (None: unknown)
        # (x, y) training tensors where the model was fitted in memory (``mdnlab.MDN``): the
        # standard errors use them instead of rereading the run's data file
        self.training = training

    def __repr__(self) -> str:
        f = self.family
        x = ", ".join(self.schema.x_columns) if self.schema.x_columns else f"{self.n_inputs} inputs"
        return (
            f"FittedModel({f.name}, K={f.n_components}, event_shape={f.event_shape}, x: {x}; "
            f"from {self.source or 'memory'})"
        )

    # --- what the model is ---------------------------------------------------------------------
    @property
    def family(self):
        return self.module.family

    @property
    def x_scaler(self):
        return self.module.x_scaler

    @property
    def y_scaler(self):
        return self.module.y_scaler

    @property
    def n_inputs(self) -> int:
        return int(self.module.hparams.in_dim)

    @property
    def n_components(self) -> int:
        return self.family.n_components

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.family.event_shape)

    @property
    def scalar_y(self) -> bool:
        return self.family.name == "gaussian" and self.event_shape == (1,)

    def inputs(self, x) -> torch.Tensor:
        """The network's inputs (n, d), float64, original units (checked)."""
        return encode_x(x, self.schema, self.n_inputs)

    # --- the distribution ----------------------------------------------------------------------
    @torch.no_grad()
    def distribution(
        self, x, temperature: float = 1.0, weight_temperature: float | None = None
    ) -> Distribution:
        """q(y | x) over y in original units, batch shape (n,): a ``MixtureSameFamily``
        (detached from the weights). Temperatures: ``mdnlab.fitted.distributions``."""
        mixture = self.module.mixture(self.inputs(x))
        return original_units(self.module, mixture, temperature, weight_temperature)

    @torch.no_grad()
    def log_prob(self, x, y) -> np.ndarray:
        """log q(y | x) per row in nats, original units (the run's NLL numbers); y an array or
        a DataFrame with the y columns (text labels for categorical)."""
        inputs = self.inputs(x)
        targets = encode_y(y, self.schema, self.module, inputs.shape[0])
        return self.module.log_prob(inputs, targets).numpy()

    @torch.no_grad()
    def sample(
        self,
        x,
        n: int,
        temperature: float = 1.0,
        weight_temperature: float | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """n draws of y per row of x: (rows, n, *event_shape); class codes (int64) for
        categorical. With ``seed`` the draws are reproducible and torch's global generator is left
        as it was; without, they come from that generator."""
        if int(n) != n or n < 1:
            raise FittedModelError(f"n must be a positive integer, got {n!r}")
        dist = self.distribution(x, temperature, weight_temperature)
        if seed is None:  # a seed from torch's global generator, which moves on
            seed = int(torch.randint(2**62, ()))
        draws = seeded_sample(dist, int(n), int(seed)).movedim(0, 1)
        if isinstance(self.family, CategoricalFamily):
            return draws.to(torch.int64).numpy()
        return draws.numpy()

    # --- moments and parameters ----------------------------------------------------------------
    @torch.no_grad()
    def mean(self, x):
        """E[y | x]: Gaussian (n, q); Wishart (n, p, p); categorical, per y column the mean of
        its one-hot indicator, i.e. its class probabilities: a list of (n, C_d) arrays."""
        dist = self.distribution(x)
        name = self.family.name
        if name == "gaussian":
            return mixture_mean_and_covariance(dist)[0].numpy()
        if name == "wishart":
            return wishart_moments(dist)[0].numpy()
        return [p.numpy() for p in CategoricalFamily.marginal_probs(dist)]

    @torch.no_grad()
    def covariance(self, x) -> np.ndarray:
        """Cov(y | x): Gaussian (n, q, q); Wishart Cov(Y_ij, Y_kl) as (n, p, p, p, p)."""
        dist = self.distribution(x)
        if self.family.name == "gaussian":
            return mixture_mean_and_covariance(dist)[1].numpy()
        if self.family.name == "wishart":
            return wishart_moments(dist)[1].numpy()
        raise FittedModelError(
            "covariance is not defined for class-coded targets (model=categorical); use "
            "class_probabilities(x)"
        )

    @torch.no_grad()
    def weights(self, x) -> np.ndarray:
        """Mixing weights (n, K): components in the canonical order (decreasing mean weight
        over the training x) for a run with ``model.identifiability=ordered``, else as fitted."""
        return self.module.mixture(self.inputs(x)).mixture_distribution.probs.numpy()

    @torch.no_grad()
    def components(self, x) -> dict:
        """Per-component parameters in original units, K second: ``weights`` (n, K) and
        Gaussian ``means`` (n, K, q), ``covariances`` (n, K, q, q); categorical
        ``probabilities`` (per y column (n, K, C_d)); Wishart ``df`` (n, K), ``scales`` and
        ``means`` (n, K, p, p)."""
        dist = self.distribution(x)
        parts = dist.component_distribution
        out = {"weights": dist.mixture_distribution.probs.numpy()}
        if self.family.name == "gaussian":
            out["means"] = parts.mean.numpy()
            out["covariances"] = component_covariance(parts).numpy()
        elif self.family.name == "categorical":
            out["probabilities"] = [p.numpy() for p in parts.probs]
        else:
            scales = parts.scale_tril @ parts.scale_tril.transpose(-1, -2)
            out["df"] = parts.df.numpy()
            out["scales"] = scales.numpy()
            out["means"] = (parts.df[..., None, None] * scales).numpy()
        return out

    @torch.no_grad()
    def class_probabilities(self, x) -> dict[str, pd.DataFrame]:
        """Categorical: per y column, a DataFrame (rows of x) of class probabilities with
        columns named by the class labels (by the codes where the column had none)."""
        if not isinstance(self.family, CategoricalFamily):
            raise FittedModelError(
                f"class_probabilities is for model=categorical; this model is {self.family.name}"
            )
        index = x.index if isinstance(x, pd.DataFrame) else None
        names = self.schema.y_columns or [f"y{j}" for j in range(self.event_shape[0])]
        out = {}
        for col, probs in zip(names, self.mean(x), strict=True):
            labels = self.schema.y_levels.get(col) or list(range(probs.shape[1]))
            out[col] = pd.DataFrame(probs, columns=labels, index=index)
        return out

    # --- scalar y --------------------------------------------------------------------------------
    def _scalar_parts(self, x):
        """(log weights, means, sds), each (n, K), of q(y_s | x) in standardised units."""
        if not self.scalar_y:
            raise FittedModelError(
                f"cdf, quantile and modes need a scalar y (model=gaussian with one y column); "
                f"this model is {self.family.name} with event shape {self.event_shape}"
            )
        mixture = self.module.mixture(self.inputs(x))
        normal = mixture.component_distribution.base_dist
        return mixture.mixture_distribution.logits, normal.loc[..., 0], normal.scale[..., 0]

    @torch.no_grad()
    def cdf(self, x, y) -> np.ndarray:
        """P(Y <= y | x); y a number, (n,) (one per row) or (n, m) (m per row)."""
        parts = self._scalar_parts(x)
        n = parts[0].shape[0]
        values = np.asarray(y, dtype=np.float64)
        if values.ndim == 0:
            grid = np.full((n, 1), float(values))
        elif values.ndim in (1, 2) and values.shape[0] == n:
            grid = values.reshape(n, -1)
        else:
            raise FittedModelError(
                f"y: shape {values.shape}; expected a number, ({n},) or ({n}, m) for {n} rows of x"
            )
        out = scalar.cdf(*parts, self.y_scaler(torch.as_tensor(grid))).numpy()
        return out.reshape(values.shape if values.ndim else (n,))

    @torch.no_grad()
    def quantile(self, x, q) -> np.ndarray:
        """F^-1(q | x) for probabilities q: a number gives (n,), a list (n, len(q))."""
        probs = np.asarray(q, dtype=np.float64)
        if probs.ndim > 1 or not np.all((probs >= 0) & (probs <= 1)):
            raise FittedModelError(
                f"q: expected probabilities in [0, 1] (a number or a list), got {q!r}"
            )
        parts = self._scalar_parts(x)
        y_s = scalar.quantile(*parts, torch.as_tensor(probs.reshape(-1)))
        y = self.y_scaler.inverse(y_s)
        return (y[:, 0] if probs.ndim == 0 else y).numpy()

    @torch.no_grad()
    def modes(self, x) -> tuple[np.ndarray, np.ndarray]:
        """The local maxima of q(y | x): ``(modes, densities)``, each (n, K), each row sorted
        by decreasing density and padded with NaN (a mixture of K normals has at most K modes
        in one dimension); densities in original units."""
        parts = self._scalar_parts(x)
        y_s, log_p = scalar.modes(*parts)
        scale = self.y_scaler.scale[0]
        density = torch.where(torch.isnan(y_s), torch.nan, log_p.exp() / scale)
        return self.y_scaler.inverse(y_s).numpy(), density.numpy()

    # --- a table -------------------------------------------------------------------------------
    def predict(
        self,
        x,
        what: str | Sequence[str] = ("mean",),
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
        se: bool = False,
    ) -> pd.DataFrame:
        """A long table: one row per (row of x, quantity), columns ``row`` (0-based position in
        x), ``quantity`` and ``value``; with ``se``, also ``se_hessian`` and ``se_sandwich``,
        the delta-method SEs from the stored fit (``standard_errors``; NaN for quantities the
        inference step has none for, such as quantiles and modes). Quantities are named as in ``inference/predictions.csv``
        (0-based positions in ``data.y_cols`` or in the matrix; components in the canonical
        order): ``mean`` gives mean[j] (Wishart mean[i,j], i >= j; categorical prob[d,c]),
        ``sd`` sd[j] (Wishart sd[i,j]), ``variance`` cov[i,j] (Wishart var[i,j]),
        ``quantiles`` quantile[q] (scalar y), ``probabilities`` prob[d,c] (categorical),
        ``weights`` weight[k], ``modes`` mode[i] and mode_density[i] (scalar y; only the modes
        a row has). ``what`` is a name, a list or a comma-separated string. Wide form:
        ``frame.pivot(index="row", columns="quantity", values="value")``."""
        names = [w.strip() for w in what.split(",")] if isinstance(what, str) else list(what)
        unknown = [w for w in names if w not in PREDICTABLE]
        if unknown:
            raise FittedModelError(
                f"predict: what={unknown[0]!r} is not known; choose from {', '.join(PREDICTABLE)}"
            )
        inputs = self.inputs(x)  # checked once; every part below takes the encoded tensor
        n = inputs.shape[0]
        blocks: dict[str, np.ndarray] = {}
        for name in dict.fromkeys(names):
            blocks |= self._predict_one(name, inputs, quantiles)
        if not blocks:
            return pd.DataFrame(columns=["row", "quantity", "value"])
        frame = pd.concat(
            [
                pd.DataFrame({"row": np.arange(n), "quantity": key, "value": values})
                for key, values in blocks.items()
            ],
            ignore_index=True,
        )
        # Rows of x in order, each with its quantities in the order asked; NaN: absent modes.
        frame = frame.dropna(subset=["value"]).sort_values("row", kind="stable")
        frame = frame.reset_index(drop=True)
        if se:
            frame = frame.merge(delta_method_ses(self, inputs), on=["row", "quantity"], how="left")
        return frame

    def _predict_one(self, name: str, x, quantiles) -> dict[str, np.ndarray]:
        family = self.family.name
        if name == "weights":
            w = self.weights(x)
            return {f"weight[{k}]": w[:, k] for k in range(w.shape[1])}
        if name == "quantiles":
            qs = [float(q) for q in quantiles]
            values = self.quantile(x, qs)
            return {f"quantile[{q:g}]": values[:, j] for j, q in enumerate(qs)}
        if name == "modes":
            locations, densities = self.modes(x)
            out = {}
            for i in range(locations.shape[1]):
                out[f"mode[{i}]"] = locations[:, i]
                out[f"mode_density[{i}]"] = densities[:, i]
            return out
        if family == "categorical":
            if name in ("sd", "variance"):
                raise FittedModelError(
                    f"predict: {name} is not defined for class-coded targets; use probabilities"
                )
            return {
                f"prob[{d},{c}]": p[:, c]
                for d, p in enumerate(self.mean(x))
                for c in range(p.shape[1])
            }
        if name == "probabilities":
            raise FittedModelError(
                f"predict: probabilities are for model=categorical, not {family}"
            )
        if family == "gaussian":
            if name == "mean":
                m = self.mean(x)
                return {f"mean[{j}]": m[:, j] for j in range(m.shape[1])}
            cov = self.covariance(x)
            q = cov.shape[1]
            if name == "sd":
                return {f"sd[{j}]": np.sqrt(cov[:, j, j]) for j in range(q)}
            return {f"cov[{i},{j}]": cov[:, i, j] for i in range(q) for j in range(i + 1)}
        p = self.event_shape[0]
        pairs = [(i, j) for i in range(p) for j in range(i + 1)]
        if name == "mean":
            m = self.mean(x)
            return {f"mean[{i},{j}]": m[:, i, j] for i, j in pairs}
        cov = self.covariance(x)
        var = {(i, j): cov[:, i, j, i, j] for i, j in pairs}
        if name == "sd":
            return {f"sd[{i},{j}]": np.sqrt(v) for (i, j), v in var.items()}
        return {f"var[{i},{j}]": v for (i, j), v in var.items()}
