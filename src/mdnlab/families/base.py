"""The small interface every output family implements.

A family turns the raw outputs of the network head into a
``torch.distributions.MixtureSameFamily``: K - 1 free gating logits (the K-th is fixed at 0,
so the softmax's shift invariance puts no null space into the Hessian) plus the component
parameters. Log-sum-exp over components and sampling live in that one torch class; a family
builds its components, checks and shapes its targets (``prepare_targets``), and computes its
identifiable summaries, the mixture's moments or probabilities (``quantities``). Optional hooks
let the data set options (class counts), stratify splits and add evaluation metrics.

Families work on a *standardised* target scale. The family's target scaler (an ``nn.Module``
with ``fit``, ``forward``, ``inverse`` and ``log_abs_det_jacobian``; the identity for discrete
targets) maps targets there and carries the log-Jacobian that keeps every reported NLL in the
original units of y.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, MixtureSameFamily


class Family(ABC):
    """An output family: K mixture components over targets of a given event shape."""

    name: str

    def __init__(self, n_components: int, event_shape: tuple[int, ...]):
        self.n_components = n_components
        self.event_shape = tuple(event_shape)

    # --- what a family defines -------------------------------------------------------------
    @property
    @abstractmethod
    def params_per_component(self) -> int:
        """Raw head outputs each component needs."""

    @abstractmethod
    def component_distribution(self, raw: torch.Tensor) -> Distribution:
        """raw: (batch, K, params_per_component) -> a distribution with batch shape (batch, K)."""

    @abstractmethod
    def make_scaler(self) -> nn.Module:
        """An unfitted target scaler for this event shape (fitted on the training split)."""

    @abstractmethod
    def quantities(self, mixture: MixtureSameFamily, scaler: nn.Module) -> dict[str, torch.Tensor]:
        """Identifiable summaries of q(y|x) in the original units of y, each of shape (batch,).

        Names index 0-based positions in ``data.y_cols`` (or in the matrix): ``mean[0]``.
        """

    @classmethod
    @abstractmethod
    def prepare_targets(cls, y: np.ndarray, source: str, columns: list[str]) -> np.ndarray:
        """The targets as read (``(n, q)`` columns or an ``(n, p, p)`` array), checked and
        reshaped to ``(n, *event_shape)`` float64; a DataError naming ``source``, the column or
        row and what was expected when they cannot be modelled by this family."""

    # --- optional hooks (defaults suit continuous families) ------------------------------------
    # Text-valued target columns are encoded as 0-based class codes (sorted levels) when True.
    text_targets: bool = False

    @classmethod
    def options_from_data(
        cls, y: np.ndarray, columns: list[str], y_levels: dict[str, list[str]], source: str
    ) -> dict:
        """Constructor options the data decide (e.g. class counts), from the prepared targets
        of the whole dataset; may raise DataError (a class too rare to split, for instance)."""
        return {}

    @classmethod
    def check_options(
        cls,
        y: np.ndarray,
        columns: list[str],
        y_levels: dict[str, list[str]],
        source: str,
        options: dict,
    ) -> None:
        """Check options the user set in ``model`` (not taken from the data) against y."""
        return None

    @classmethod
    def strata(cls, y: np.ndarray) -> np.ndarray | None:
        """A label per row to stratify random splits on (None: plain random splits)."""
        return None

    def scale_floor_ratio(self, mixture: MixtureSameFamily) -> float | None:
        """Smallest floored scale over the batch and components divided by its floor (None when
        the family has no floor). Near 1, a component is collapsing onto a few points: the
        mixture likelihood's unbounded spike, held only by the floor."""
        return None

    def evaluation_metrics(
        self, mixture: MixtureSameFamily, y_standardised: torch.Tensor, scaler: nn.Module
    ) -> dict[str, float]:
        """Metrics beyond the NLL for one split, unprefixed (``accuracy``); ``scaler`` maps
        y back to its original units."""
        return {}

    def component_quantities(
        self, mixture: MixtureSameFamily, scaler: nn.Module
    ) -> dict[str, torch.Tensor]:
        """Each component's own summaries in the original units of y, each of shape
        (batch, K), keyed by a name template with ``{k}`` for the component:
        ``component_mean[{k},0]``. The first entry breaks ties in the canonical order. Not
        identified across fits without an order on the labels (``diagnostics/labels.py``)."""
        return {}

    def identifiability_notes(self) -> list[str]:
        """What this family's parameterisation leaves unidentified whatever the data."""
        return []

    @property
    def reference_size(self) -> int:
        """Entries of the scale penalty's data-derived reference (``MDNModule.scale_reference``;
        the Gaussian family's noise variance per coordinate of y); 0: the penalty has none."""
        return 0

    def scale_penalty(
        self, raw: torch.Tensor, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per row (batch,) of raw head outputs (batch, n_raw_outputs): the penalty on the
        component scales at that row's x (``train.scale_penalty``; docs/estimation.md), in
        standardised units, 0 at its minimum; ``reference`` (``reference_size`` entries) where
        the family has one. Families without a penalty raise ``NotImplementedError`` (the run's
        config check says so first)."""
        raise NotImplementedError(f"the {self.name} family has no scale penalty yet")

    @classmethod
    def supports_scale_penalty(cls) -> bool:
        return cls.scale_penalty is not Family.scale_penalty

    # --- the shared path ---------------------------------------------------------------------
    @property
    def n_raw_outputs(self) -> int:
        return (self.n_components - 1) + self.n_components * self.params_per_component

    def relabelling(self, order) -> torch.Tensor:
        """(n_raw_outputs, n_raw_outputs) T with raw' = T raw: the same mixture with its
        components listed in ``order`` (new component j is old component ``order[j]``).

        Component blocks are permuted; the free logits are re-referenced to the new last
        component, l'_j = l_order[j] - l_order[K-1], with the old K-th logit fixed at 0. So
        relabelling is linear in the head's outputs, exact, and applies to its weights.
        """
        k, m, c = self.n_components, self.n_raw_outputs, self.params_per_component
        order = [int(i) for i in order]
        if sorted(order) != list(range(k)):
            raise ValueError(f"{order} is not a permutation of 0..{k - 1}")
        t = torch.zeros(m, m, dtype=torch.float64)
        last = order[-1]
        for j in range(k - 1):
            if order[j] < k - 1:
                t[j, order[j]] += 1.0
            if last < k - 1:
                t[j, last] -= 1.0
        for j in range(k):
            new, old = k - 1 + j * c, k - 1 + order[j] * c
            t[new : new + c, old : old + c] = torch.eye(c, dtype=torch.float64)
        return t

    def mixture(self, raw: torch.Tensor) -> MixtureSameFamily:
        """Raw head outputs (batch, n_raw_outputs) -> q(y_standardised | x)."""
        k = self.n_components
        free_logits = raw[:, : k - 1]
        logits = torch.cat([free_logits, free_logits.new_zeros(raw.shape[0], 1)], dim=1)
        components = self.component_distribution(raw[:, k - 1 :].reshape(raw.shape[0], k, -1))
        return MixtureSameFamily(
            Categorical(logits=logits, validate_args=False), components, validate_args=False
        )
