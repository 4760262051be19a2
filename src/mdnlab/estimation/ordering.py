"""``model.identifiability=ordered``: every member's components in the canonical order.

After the polish each member's components are listed by decreasing mean mixing weight over the
reference training x (``diagnostics.labels.canonical_order``). Relabelling leaves the mixture
and the NLL exactly as they were but re-references the free gating logits, which changes the
ridge penalty on them, so relabelled members are polished again (warm, a few iterations) to
the penalized optimum in their new labelling. If that moves the order again, the weights are
too close for the order to mean anything, and a warning says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mdnlab.diagnostics.labels import canonical_order, reference_rows, relabel, summary_arrays
from mdnlab.estimation.fit import FitData, MemberResult, PolishSettings, polish_members
from mdnlab.progress import say, warn


@dataclass(frozen=True)
class OrderingReport:
    relabelled: list[int]  # members whose labels the order changed
    unstable: list[int]  # members whose order moved again in the re-polish
    objective_change: float  # largest |change| of a relabelled member's penalized objective


def order_members(
    ensemble,
    members: list[MemberResult],
    data: FitData,
    polish: PolishSettings,
    label: str = "",
) -> OrderingReport:
    """Relabel each member in the canonical order (in place; ``ensemble`` follows)."""
    family = members[0].module.family
    if family.n_components == 1:
        return OrderingReport([], [], 0.0)
    x_ref = reference_rows(data.x_train)
    before = {m.index: m.objective for m in members}
    relabelled = _apply_order(ensemble, members, x_ref)
    if not relabelled:
        return OrderingReport([], [], 0.0)
    polish_members(ensemble, members, data, polish, label)  # re-evaluates when polish is off
    identity = np.arange(family.n_components)
    unstable = [
        m.index
        for m in members
        if m.index in relabelled
        and not np.array_equal(canonical_order(summary_arrays(m.module, x_ref)), identity)
    ]
    change = max(abs(members[r].objective - before[r]) for r in relabelled)
    say(
        f"{label}identifiability: components of {len(relabelled)}/{len(members)} member(s) "
        f"put in the canonical order (by mean mixing weight); penalized objective moved by "
        f"{change:.2e} at most in the re-polish"
    )
    if unstable:
        warn(
            f"{label}identifiability: the canonical order of member(s) {unstable} changed again "
            "after the re-polish: their mean mixing weights are too close for the order to be "
            "stable, so per-component quantities are not comparable across fits there"
        )
    return OrderingReport(relabelled, unstable, change)


def _apply_order(ensemble, members: list[MemberResult], x_ref: torch.Tensor) -> list[int]:
    relabelled = []
    for member in members:
        order = canonical_order(summary_arrays(member.module, x_ref))
        if np.array_equal(order, np.arange(len(order))):
            continue
        relabel(member.module.net, member.module.family, order)
        with torch.no_grad():
            for target, value in zip(
                ensemble.members.flat_views(member.index),
                member.module.net.parameters(),
                strict=True,
            ):
                target.copy_(value)
        relabelled.append(member.index)
    return relabelled
