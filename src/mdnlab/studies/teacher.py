"""A truth that the Gaussian MDN family contains exactly: a frozen MDN with separated components.

``make_teacher`` draws the weights of an ``MDNModule`` (1-d x, scalar y, identity scalers) from
a seeded ``torch.Generator`` and then sets the head so that the K components stay apart over
x in [-1, 1]: each output row's variation over x is rescaled to a fixed span and its bias puts
the row's average where it belongs (means ``SPACING`` apart, sds near 0.2-0.35, gating logits
varying by ``LOGIT_SPAN``). A fit of the same architecture to this truth has KL 0 to reach, so
the gap between the projection and the truth is exactly zero, which a simulator written in
closed form (``synth_mixture``'s sines) does not guarantee.

``Teacher`` wraps the module in the ``Simulator`` interface (x ~ U(-1, 1); y drawn in numpy
from the caller's generator, so draws depend on nothing but that generator).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mdnlab.data.simulators import Simulator, _as_2d, _pick_components
from mdnlab.module import MDNModule

SPACING = 2.5  # between neighbouring components' average means
MEAN_SPAN = 0.5  # max - min over x of each component mean
SCALE_SPAN = 0.3  # max - min over x of each raw (pre-softplus) scale output
SD_RANGE = (0.22, 0.30)  # each component's average sd is drawn uniformly in here
LOGIT_SPAN = 0.8  # max - min over x of each free gating logit
LOGIT_BIAS = 0.25  # each free logit's average is drawn uniformly in [-this, this]
HIDDEN_GAIN = 1.5  # hidden weights ~ N(0, (gain^2 / fan_in)), biases ~ N(0, 0.5^2)
HIDDEN_BIAS_SD = 0.5
MIN_WEIGHT = 0.1  # every weight stays above min(this, 0.5 / K) at every x
MIN_SEPARATION = 4.0  # min over x of (smallest gap between means) / (largest sd)
CHECK_GRID = np.linspace(-1.0, 1.0, 401)


@dataclass(frozen=True)
class Teacher(Simulator):
    """x ~ U(-1, 1);  y | x ~ the frozen MDN ``module`` (``Simulator``-compatible)."""

    module: MDNModule = field(kw_only=True, compare=False, repr=False)

    @torch.no_grad()
    def components(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weights, means and standard deviations of the components at x, each (n, K)."""
        mixture = self.module.mixture(torch.as_tensor(_as_2d(x)[:, :1]))
        parts = mixture.component_distribution
        scaler = self.module.y_scaler
        means = scaler.inverse(parts.mean)[..., 0]
        sds = parts.stddev[..., 0] * scaler.scale[0]
        return mixture.mixture_distribution.probs.numpy(), means.numpy(), sds.numpy()

    @torch.no_grad()
    def quantities(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``mean[0]`` and ``cov[0,0]``: the conditional mean and variance of y, each (n,)."""
        mixture = self.module.mixture(torch.as_tensor(_as_2d(x)[:, :1]))
        out = self.module.family.quantities(mixture, self.module.y_scaler)
        return {name: value.numpy() for name, value in out.items()}

    def sample_y(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        weights, means, sds = self.components(x)
        k = _pick_components(weights, rng)
        rows = np.arange(len(k))
        return (means[rows, k] + sds[rows, k] * rng.standard_normal(len(k)))[:, None]

    @torch.no_grad()
    def log_prob(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(_as_2d(x)[:, :1])
        yt = torch.as_tensor(_as_2d(y)[:, :1])
        return self.module.log_prob(xt, yt).numpy()


def _set_row(
    head: nn.Linear,
    row: int,
    features: torch.Tensor,
    span: float,
    centre: float,
    generator: torch.Generator,
) -> None:
    """Head row ``row``: a random direction in feature space rescaled so that its output spans
    ``span`` (max - min) over the check grid, shifted to average ``centre`` there."""
    direction = torch.randn(head.in_features, generator=generator, dtype=torch.float64)
    values = features @ direction
    direction = direction * (span / float(values.max() - values.min()))
    head.weight[row] = direction
    head.bias[row] = centre - float((features @ direction).mean())


def separation(weights: np.ndarray, means: np.ndarray, sds: np.ndarray) -> tuple[float, float]:
    """(min over rows of the smallest gap between sorted means divided by the largest sd,
    the smallest weight); the gap is inf for K = 1."""
    if means.shape[1] < 2:
        return float("inf"), float(weights.min())
    gaps = np.diff(np.sort(means, axis=1), axis=1).min(axis=1)
    return float((gaps / sds.max(axis=1)).min()), float(weights.min())


def make_teacher(
    n_components: int = 3,
    hidden_sizes: tuple[int, ...] | list[int] = (8,),
    seed: int = 0,
    activation: str = "tanh",
    name: str | None = None,
) -> Teacher:
    """A frozen Gaussian MDN (in_dim 1, event_shape [1], identity scalers) with weights drawn
    from ``torch.Generator().manual_seed(seed)``; the global random state is left as it was.

    Raises ValueError when, on a grid of x in [-1, 1], the components come closer than
    ``MIN_SEPARATION`` largest sds or a weight drops to min(``MIN_WEIGHT``, 0.5 / K). For
    K <= 3 the construction keeps clear of both (for K = 3 the gap is >= 5 sds and the weights
    >= 0.12 at seeds 0-29, tanh and relu, hidden [], [8], [16, 8]); for K >= 4 some seeds raise.
    """
    k = int(n_components)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):  # the constructor's default init draws globally
        module = MDNModule(
            in_dim=1,
            event_shape=[1],
            family="gaussian",
            n_components=k,
            hidden_sizes=list(hidden_sizes),
            activation=activation,
        )
    linears = [m for m in module.net if isinstance(m, nn.Linear)]
    grid = torch.as_tensor(CHECK_GRID[:, None])
    min_scale = module.family.min_scale
    with torch.no_grad():
        for layer in linears[:-1]:
            gain = HIDDEN_GAIN / np.sqrt(layer.in_features)
            shape = layer.weight.shape
            layer.weight.copy_(torch.randn(shape, generator=generator, dtype=torch.float64) * gain)
            noise = torch.randn(layer.out_features, generator=generator, dtype=torch.float64)
            layer.bias.copy_(noise * HIDDEN_BIAS_SD)
        features = module.net[:-1](grid)  # the head's inputs (x itself when there is none)
        head = linears[-1]
        for j in range(k - 1):
            u = float(torch.rand(1, generator=generator, dtype=torch.float64))
            bias = LOGIT_BIAS * (2 * u - 1)
            _set_row(head, j, features, LOGIT_SPAN, bias, generator)
        low, high = SD_RANGE
        for c in range(k):
            mean_row, scale_row = k - 1 + 2 * c, k - 1 + 2 * c + 1
            _set_row(head, mean_row, features, MEAN_SPAN, SPACING * (c - (k - 1) / 2), generator)
            sd = low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64))
            raw = float(np.log(np.expm1(sd - min_scale)))  # softplus(raw) + min_scale = sd
            _set_row(head, scale_row, features, SCALE_SPAN, raw, generator)
    module.requires_grad_(False)
    hidden = "-".join(str(int(h)) for h in hidden_sizes) or "linear"
    name = name or f"teacher_k{k}_h{hidden}_{activation}_s{int(seed)}"
    teacher = Teacher(
        name,
        ["x"],
        ["y"],
        f"x~U(-1,1); y|x ~ a frozen Gaussian MDN, K={k}, hidden {list(hidden_sizes)}, "
        f"{activation}, seed {int(seed)}: components {SPACING} apart (well specified)",
        module=module,
    )
    gap, weight = separation(*teacher.components(CHECK_GRID))
    floor = min(MIN_WEIGHT, 0.5 / k)
    if gap <= MIN_SEPARATION or weight <= floor:
        raise ValueError(
            f"make_teacher(n_components={k}, hidden_sizes={list(hidden_sizes)}, seed={seed}): "
            f"components {gap:.2f} largest sds apart (need > {MIN_SEPARATION}), smallest "
            f"weight {weight:.3f} (need > {floor:.3g}); try another seed"
        )
    return teacher
