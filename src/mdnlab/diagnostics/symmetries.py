"""The null space of A (Hessian of the mean NLL, lambda = 0) predicted from structure alone.

``predicted_null_dimension(module, x_train)`` counts the weight-space directions along which the
model's conditional laws q(.|x_i) at the training inputs do not change, from the architecture,
the weights and the hidden activations on module.x_scaler(x_train); it never looks at y or at
A. Each rule builds explicit direction vectors (in the order of ``FlatModel(module)``'s theta);
the prediction is the rank of their union, so nothing is counted twice, and each breakdown entry
counts only what the entries before it do not already span.

Why they are null, and where. Along a move c(t) through theta that leaves every q(.|x_i)
unchanged, d^2/dt^2 L = c'A c' + g.c'' = 0, g the gradient. So

(a) at any weights, for moves that are straight lines in a whole neighbourhood (L does not
    depend on those weights there; exactly, or to O(mixing weight)):
    ``inactive unit``      a hidden unit with |s'(a_i)| <= tol on every row (a relu never active,
                           a saturated unit): its fan_in + 1 incoming weights and bias;
    ``constant unit, outgoing`` for such a unit (activation constant, 0 for a relu): its fan_out
                           outgoing weights act as the next bias (direction w_k - c b_next,k);
    ``unseen input``       incoming directions orthogonal to every input row [h_i; 1] a unit is
                           sensitive to (collinear x, a constant unit feeding the next layer);
                           for smooth units and for the head rows (relu units: next rule);
    ``zero-weight component`` mixing weight <= weight_tol on every row: the head rows of its
                           params_per_component raw outputs and of its gating logit (for the
                           K-th, whose logit is fixed at 0, the common shift of all free logit
                           rows): (params_per_component + 1) (hidden + 1). Null to O(weight): the
                           curvature they carry is the component's responsibility;
(b) at any stationary point (g = 0), for continuous symmetries of a whole neighbourhood whose
    generator xi is linear in theta, so that A xi = -(D xi)' g = 0:
    ``relu group``         relu units sharing one activation pattern on the rows act there as
                           one linear map V U: rescaling of each unit; GL(s) mixing of s units
                           with the same pattern; incoming directions unseen by the pattern's
                           rows; for units active on every row their biases against the next
                           bias. Counted as the null space of the differential of
                           (V, U[, b_next]) -> (V U + b_next e') R, R the span of the
                           pattern's input rows [h_i; 1], e the bias coordinate;
(c) at a local minimum, for exact moves through theta that are no symmetry of a neighbourhood:
    c'A c' = 0 there and A is PSD, so A c' = 0. At a saddle they can instead pair with a coupling
    block C into +/- eigenvalue pairs (null count down by rank C, as many negative eigenvalues;
    still near-null when C is small). C vanishes too wherever, at every distinct x, the rows'
    summed gradient of the NLL in the raw outputs does (as in the tests, which build such
    data). The configurations below are generically saddles with continuous x (Fukumizu and
    Amari's plateaus): a dead unit's C below, and for duplicates the coupling of gating weights
    to splits, t (1 - t) mean_i h_im h_in dNLL_i/dtheta_i; in a K = 1 fit duplicated into K = 2
    at continuous x the gating weights had |A v| ~ 1e-8 to 1e-7 of max |A|, the bias 2e-12.
    ``dead unit``          outgoing weights ~ 0: its fan_in + 1 incoming weights and bias (C is
                           d(grad outgoing)/d(incoming) = mean_i delta_i (x) s'(a_i) [h_i; 1],
                           delta_i the NLL's gradient in the next layer's pre-activations);
    ``constant unit, outgoing`` and ``constant unit, bias`` for a unit with zero incoming
                           weights (not saturated): outgoing weights and its own bias against
                           the next bias (C = s'(b) mean_i delta_i (x) h_i);
    ``duplicate components, gating`` components with identical parameter head rows (the same
                           raw parameters at every x) enter only through the sum of their
                           weights. If they are all the live components, every gating row is
                           free ((K - 1)(hidden + 1) for K duplicates); otherwise, when their
                           weight ratios are constant in x (gating rows equal but for the bias),
                           the |G| - 1 bias trades that keep the summed weight; with ratios that
                           vary in x there is no exact trade (and such a point is generically
                           not stationary). Identical: head rows within tol of the head's scale;
(d) ``other, raw-output Jacobian`` (``jacobian=True``), last: the null space of d raw(x_i)/d theta
    over the distinct training inputs, beyond all of the above. It catches what the per-layer
    rules miss because they take the next layer to be sensitive to every pre-activation on
    every row: with relu layers downstream, a unit's changes on rows where the units it feeds
    are inactive do not reach the output. First-order directions: null in A at a local minimum
    where they are exact moves, as for the relu cases tested.

Conditional, not in ``total`` (``conditional``): ``duplicate split``, directions that keep the
mixture only to first order. Duplicates with constant weight shares t : 1 - t can split,
theta_a + (1 - t) c and theta_b - t c for any head-row change c (params_per_component
(hidden + 1) per extra duplicate); at a stationary point the NLL's curvature along a split is

    t (1 - t) mean_i r_i c_i' [f''/f](y_i) c_i,   f''/f = d^2 log f + (d log f)(d log f)',

r_i the duplicates' joint responsibility, f their density, c_i the raw change at x_i. For a
Gaussian component in (mean, sd) coordinates, with z the standardised residual,
f''/f = [[z^2 - 1, z^3 - 3z], [z^3 - 3z, z^4 - 5z^2 + 2]] / sd^2: the mean split is exactly null
only when the feature-weighted moments of z^2 - 1 and z^3 - 3z vanish, the sd split when those
of z^3 - 3z and z^4 - 5z^2 + 2 (skewness, excess kurtosis) do. In a finite sample they are
O(n^-1/2), neither zero nor of one sign: the split directions are near-null (weakly
identified), or the duplicate point is a saddle. When the duplicates are not all the live
components, their gating weights can also trade (logit a up by t_b c.h, b down by t_a c.h):
their summed log-weight s then moves by t_a t_b (c.h)^2 / 2 at second order, curvature
t_a t_b mean_i (d NLL_i / d s_i) (c.h_i)^2, null only where that h h'-weighted gradient is 0
(it is when the per-x gradients are, not at a generic minimum): hidden per extra duplicate.

Not predicted: discrete symmetries (sign flips of odd units, permutations of units and of
components) give no null direction; duplicate hidden units (equal incoming weights) and
families that are not identifiable (a mixture of categoricals over one categorical target)
are left out; and near-null eigenvalues from weak identification in a finite sample are not
structural. The excess of A's measured null count over ``total`` is that "redundancy".

Thresholds (``tol``, relative, default 1e-8): a weight is numerically zero when |w| <= tol *
the largest |weight or bias| of its Linear layer; a unit inactive when |s'(a_i)| <= tol on every
row (activations here have s' of order 1); constant when max_i s(a_i) - min_i s(a_i) <= tol *
max(1, max_i |s(a_i)|); direction vectors (normalised) and row spans are linearly dependent at
singular values <= tol of the largest. A mixing weight is zero at <= ``weight_tol`` (1e-12),
far below the eigenvalue threshold used to measure A's null count (1e-9 of the largest |eig|,
float64): the curvature of a zero-weight component is of the order of its weight times the
density ratio f_k(y_i)/q(y_i|x_i), which needs y and is not checked here (a component of tiny
weight placed where the data have almost no mixture density could still carry curvature).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

DEFAULT_TOL = 1e-8
DEFAULT_WEIGHT_TOL = 1e-12

INACTIVE = "inactive unit"
DEAD = "dead unit"
CONSTANT_OUT = "constant unit, outgoing"
CONSTANT_BIAS = "constant unit, bias"
RELU_GROUP = "relu group"
UNSEEN = "unseen input"
ZERO_WEIGHT = "zero-weight component"
DUPLICATE_GATING = "duplicate components, gating"
DUPLICATE_SPLIT = "duplicate split"
OTHER = "other, raw-output Jacobian"

# Where each reason's directions are exactly null in A (module docstring, (a)-(c)).
NULL_WHERE = {
    INACTIVE: "any weights",
    UNSEEN: "any weights",
    ZERO_WEIGHT: "any weights, to O(mixing weight)",
    CONSTANT_OUT: "any weights for an inactive unit; else at a local minimum",
    RELU_GROUP: "any stationary point",
    DEAD: "a local minimum",
    CONSTANT_BIAS: "a local minimum",
    DUPLICATE_GATING: "a local minimum",
    DUPLICATE_SPLIT: "only where the split moments vanish (first order elsewhere)",
    OTHER: "a local minimum, where they are exact moves (first order)",
}

JACOBIAN_CHUNK_ROWS = 256


class NullEntry(NamedTuple):
    reason: str
    where: str  # "layer l unit j", "layer l units [..]", "head", "component k", ...
    count: int


@dataclass(frozen=True)
class NullPrediction:
    total: int
    breakdown: list[NullEntry]
    n_params: int
    conditional: list[NullEntry] = field(default_factory=list)  # first-order only; not in total
    # (n_params, total) orthonormal columns spanning the predicted directions, theta order
    basis: np.ndarray = field(default=None, repr=False, compare=False)

    @property
    def conditional_total(self) -> int:
        return sum(e.count for e in self.conditional)

    def describe(self) -> str:
        parts = [f"{e.reason} {e.where}: {e.count}" for e in self.breakdown]
        text = f"predicted null dimension {self.total} of {self.n_params}"
        text += f" ({'; '.join(parts)})" if parts else " (none structural)"
        if self.conditional:
            extra = "; ".join(f"{e.reason} {e.where}: {e.count}" for e in self.conditional)
            text += f"; first-order only, not counted: {extra}"
        return text


# --- the network, as numbers ----------------------------------------------------------------
@dataclass
class _Linear:
    weight: np.ndarray  # (out, in)
    bias: np.ndarray  # (out,)
    w_start: int  # offset of weight[0, 0] in theta
    b_start: int

    @property
    def scale(self) -> float:
        return float(max(np.abs(self.weight).max(initial=0.0), np.abs(self.bias).max(initial=0.0)))

    def w_index(self, row: int, col: int) -> int:
        return self.w_start + row * self.weight.shape[1] + col

    def row_indices(self, row: int) -> list[int]:
        """theta indices of one output unit's incoming weights, then its bias."""
        cols = range(self.weight.shape[1])
        return [self.w_index(row, c) for c in cols] + [self.b_start + row]


@dataclass
class _Hidden:
    """One hidden layer on the training rows: inputs [h; 1], pre-activations, s, s'."""

    inputs: np.ndarray  # (n, fan_in + 1), the layer's input rows with a trailing 1
    pre: np.ndarray  # (n, width)
    act: np.ndarray
    slope: np.ndarray
    relu: bool


def _linears(module) -> list[_Linear]:
    offsets, start = {}, 0
    for name, p in module.named_parameters():
        offsets[name] = start
        start += p.numel()
    out = []
    for name, layer in module.net.named_children():
        if isinstance(layer, nn.Linear):
            out.append(
                _Linear(
                    layer.weight.detach().double().numpy(),
                    layer.bias.detach().double().numpy(),
                    offsets[f"net.{name}.weight"],
                    offsets[f"net.{name}.bias"],
                )
            )
    return out


def _hidden_layers(module, x: torch.Tensor) -> tuple[list[_Hidden], np.ndarray, torch.Tensor]:
    """Hidden layers on module.x_scaler(x), the last hidden rows [h; 1] and the raw outputs."""
    children = list(module.net.children())
    h = module.x_scaler(x.to(torch.float64)).detach()
    layers = []
    for linear, activation in zip(children[0:-1:2], children[1::2], strict=True):
        pre = linear(h).detach().requires_grad_(True)
        act = activation(pre)
        (slope,) = torch.autograd.grad(act.sum(), pre)
        layers.append(
            _Hidden(
                _with_ones(h),
                pre.detach().numpy(),
                act.detach().numpy(),
                slope.numpy(),
                isinstance(activation, nn.ReLU),
            )
        )
        h = act.detach()
    raw = children[-1](h).detach()
    return layers, _with_ones(h), raw


def _with_ones(h: torch.Tensor) -> np.ndarray:
    h = h.detach().numpy()
    return np.hstack([h, np.ones((h.shape[0], 1))])


# --- direction vectors -------------------------------------------------------------------------
class _Directions:
    """Direction vectors grouped by (reason, where), in the order they were added."""

    def __init__(self, n_params: int):
        self.n_params = n_params
        self.groups: list[tuple[str, str, list[np.ndarray]]] = []

    def add(self, reason: str, where: str, vectors: list[np.ndarray]) -> None:
        if vectors:
            self.groups.append((reason, where, vectors))

    def unit(self, indices: list[int]) -> list[np.ndarray]:
        out = []
        for i in indices:
            v = np.zeros(self.n_params)
            v[i] = 1.0
            out.append(v)
        return out

    def sparse(self, entries: dict[int, float]) -> np.ndarray:
        v = np.zeros(self.n_params)
        for i, value in entries.items():
            v[i] += value
        return v


def _incremental_ranks(groups, basis: np.ndarray, tol: float):
    """Entries with the rank each group adds to ``basis`` (orthonormal columns), and the basis."""
    entries = []
    for reason, where, vectors in groups:
        m = np.stack(vectors, axis=1)
        norms = np.linalg.norm(m, axis=0)
        m = m[:, norms > 0] / norms[norms > 0]
        residual = m - basis @ (basis.T @ m)
        u, s, _ = np.linalg.svd(residual, full_matrices=False)
        rank = int(np.sum(s > tol))
        if rank:
            basis = np.hstack([basis, u[:, :rank]])
            entries.append(NullEntry(reason, where, rank))
    return entries, basis


def _null_space(matrix: np.ndarray, tol: float) -> np.ndarray:
    """Orthonormal basis (columns) of the null space of ``matrix``, singular values <= tol max."""
    n = matrix.shape[1]
    if matrix.size == 0:
        return np.eye(n)
    _, s, vt = np.linalg.svd(matrix, full_matrices=True)
    top = s.max(initial=0.0)
    rank = int(np.sum(s > tol * top)) if top > 0 else 0
    return vt[rank:].T


def _row_span(rows: np.ndarray, tol: float) -> np.ndarray:
    """Orthonormal basis (columns) of the span of ``rows``."""
    if rows.shape[0] == 0:
        return np.zeros((rows.shape[1], 0))
    _, s, vt = np.linalg.svd(rows, full_matrices=False)
    rank = int(np.sum(s > tol * s.max(initial=0.0))) if s.size and s.max() > 0 else 0
    return vt[:rank].T


# --- unit rules ------------------------------------------------------------------------------
@dataclass
class _UnitState:
    inactive: bool
    dead: bool
    constant: bool
    level: float  # the constant activation value (mean over rows)
    slope_constant: bool
    mean_slope: float


def _unit_state(layer: _Hidden, outgoing: _Linear, j: int, tol: float) -> _UnitState:
    act, slope = layer.act[:, j], layer.slope[:, j]
    out_scale = max(outgoing.scale, np.finfo(float).tiny)
    spread = float(act.max() - act.min())
    slope_spread = float(slope.max() - slope.min())
    return _UnitState(
        inactive=bool(np.abs(slope).max() <= tol),
        dead=bool(np.abs(outgoing.weight[:, j]).max() <= tol * out_scale),
        constant=spread <= tol * max(1.0, float(np.abs(act).max())),
        level=float(act.mean()),
        slope_constant=slope_spread <= tol * max(float(np.abs(slope).max()), np.finfo(float).tiny),
        mean_slope=float(slope.mean()),
    )


def _unit_rules(dirs, incoming, outgoing, depth: int, j: int, state: _UnitState) -> None:
    where = f"layer {depth} unit {j}"
    if state.inactive:
        dirs.add(INACTIVE, where, dirs.unit(incoming.row_indices(j)))
    elif state.dead:
        dirs.add(DEAD, where, dirs.unit(incoming.row_indices(j)))
    if state.constant:
        exchange = [
            dirs.sparse({outgoing.w_index(k, j): 1.0, outgoing.b_start + k: -state.level})
            for k in range(outgoing.weight.shape[0])
        ]
        dirs.add(CONSTANT_OUT, where, exchange)
        if not (state.inactive or state.dead) and state.slope_constant:
            entries = {incoming.b_start + j: 1.0}
            for k, w in enumerate(outgoing.weight[:, j]):
                entries[outgoing.b_start + k] = -state.mean_slope * w
            dirs.add(CONSTANT_BIAS, where, [dirs.sparse(entries)])


def _unseen_rules(dirs, inputs: np.ndarray, linear: _Linear, rows, where: str, tol: float):
    """For each (unit j, its sensitive rows) in ``rows``: the directions of j's incoming weights
    and bias orthogonal to every input row [h_i; 1] it is sensitive to."""
    vectors, nulls = [], {}
    for j, sensitive in rows:
        key = sensitive.tobytes()
        if key not in nulls:
            nulls[key] = _null_space(inputs[sensitive], tol)
        null = nulls[key]
        index = linear.row_indices(j)
        for col in null.T:
            vectors.append(dirs.sparse(dict(zip(index, col, strict=True))))
    dirs.add(UNSEEN, where, vectors)


def _relu_group(dirs, layer, incoming, outgoing, units: list[int], pattern, depth: int, tol: float):
    """Null space of (V, U[, b_next]) -> (V U + b_next e') R, R the pattern's input span.

    V (fan_out x s) outgoing, U (s x (fan_in + 1)) incoming with biases, e the bias coordinate;
    b_next only for units active on every row, where V U's bias column adds to the next bias."""
    span = _row_span(layer.inputs[pattern], tol)  # (fan_in + 1) x rho
    fan_out, width_in = outgoing.weight.shape[0], layer.inputs.shape[1]
    v = outgoing.weight[:, units]  # fan_out x s
    u = np.hstack([incoming.weight[units], incoming.bias[units, None]])  # s x (fan_in + 1)
    columns, index = [], []
    for a, j in enumerate(units):
        for k in range(fan_out):  # d/dV[k, a]: e_k (R' u_a)'
            block = np.zeros((fan_out, span.shape[1]))
            block[k] = span.T @ u[a]
            columns.append(block.ravel())
            index.append(outgoing.w_index(k, j))
        for d, theta_index in enumerate(incoming.row_indices(j)):  # d/dU[a, d]: v_a R[d]'
            columns.append(np.outer(v[:, a], span[d]).ravel())
            index.append(theta_index)
    if bool(pattern.all()):
        for k in range(fan_out):
            block = np.zeros((fan_out, span.shape[1]))
            block[k] = span[width_in - 1]
            columns.append(block.ravel())
            index.append(outgoing.b_start + k)
    null = _null_space(np.stack(columns, axis=1), tol)
    vectors = [dirs.sparse(dict(zip(index, col, strict=True))) for col in null.T]
    label = f"layer {depth} unit {units[0]}" if len(units) == 1 else f"layer {depth} units {units}"
    dirs.add(RELU_GROUP, label, vectors)


def _layer_rules(
    dirs, layer: _Hidden, incoming: _Linear, outgoing: _Linear, depth: int, tol: float
):
    states = [_unit_state(layer, outgoing, j, tol) for j in range(incoming.weight.shape[0])]
    for j, state in enumerate(states):
        _unit_rules(dirs, incoming, outgoing, depth, j, state)
    live = [j for j, s in enumerate(states) if not (s.inactive or s.dead or s.constant)]
    if layer.relu:
        patterns: dict[bytes, list[int]] = {}
        for j in live:
            patterns.setdefault((layer.pre[:, j] > 0).tobytes(), []).append(j)
        for units in patterns.values():
            pattern = layer.pre[:, units[0]] > 0
            _relu_group(dirs, layer, incoming, outgoing, units, pattern, depth, tol)
    else:
        rows = [(j, np.abs(layer.slope[:, j]) > tol) for j in live]
        _unseen_rules(dirs, layer.inputs, incoming, rows, f"layer {depth}", tol)


# --- mixture rules ---------------------------------------------------------------------------
def _head_block(head: _Linear, rows: list[int]) -> list[int]:
    return [i for r in rows for i in head.row_indices(r)]


def _component_rows(family, k: int) -> list[int]:
    p, start = family.params_per_component, family.n_components - 1
    return list(range(start + k * p, start + (k + 1) * p))


def _logit_shift(dirs, head: _Linear, family, full: dict[int, np.ndarray]) -> list[np.ndarray]:
    """Vectors for changes of the K full logit rows (k -> change of row k's weights and bias,
    width + 1), mapped to the K - 1 free rows (softmax shift: free_j - full_{K-1})."""
    k_last = family.n_components - 1
    width = head.weight.shape[1] + 1
    last = full.get(k_last, np.zeros(width))
    entries: dict[int, float] = {}
    for j in range(k_last):
        change = full.get(j, np.zeros(width)) - last
        for i, value in zip(head.row_indices(j), change, strict=True):
            entries[i] = value
    return [dirs.sparse(entries)]


def _zero_weight_rules(dirs, head, family, weights: np.ndarray, weight_tol: float) -> set[int]:
    k_all = family.n_components
    zero = {k for k in range(k_all) if float(weights[:, k].max()) <= weight_tol}
    width = head.weight.shape[1] + 1
    for k in sorted(zero):
        vectors = dirs.unit(_head_block(head, _component_rows(family, k)))
        for d in range(width):  # the gating row of k, in full-logit terms
            vectors += _logit_shift(dirs, head, family, {k: _unit_vector(width, d)})
        dirs.add(ZERO_WEIGHT, f"component {k}", vectors)
    return zero


def _duplicate_groups(head: _Linear, family, candidates: list[int], tol: float) -> list[list[int]]:
    scale = max(head.scale, np.finfo(float).tiny)
    rows = {
        k: np.hstack(
            [head.weight[_component_rows(family, k)], head.bias[_component_rows(family, k), None]]
        )
        for k in candidates
    }
    groups: list[list[int]] = []
    for k in candidates:
        for group in groups:
            if np.abs(rows[k] - rows[group[0]]).max() <= tol * scale:
                group.append(k)
                break
        else:
            groups.append([k])
    return [g for g in groups if len(g) > 1]


def _full_logit_rows(head: _Linear, family) -> np.ndarray:
    """(K, width + 1): the K-1 free gating rows [w, b] and the fixed row of zeros."""
    k_last = family.n_components - 1
    free = np.hstack([head.weight[:k_last], head.bias[:k_last, None]])
    return np.vstack([free, np.zeros((1, free.shape[1]))])


def _unit_vector(width: int, d: int, value: float = 1.0) -> np.ndarray:
    e = np.zeros(width)
    e[d] = value
    return e


def _trade(dirs, head, family, a: int, ref: int, share: dict, d: int) -> list[np.ndarray]:
    """Full logit a up by share[ref], ref down by share[a], in coordinate d: keeps their sum."""
    width = head.weight.shape[1] + 1
    change = {a: _unit_vector(width, d, share[ref]), ref: _unit_vector(width, d, -share[a])}
    return _logit_shift(dirs, head, family, change)


def _duplicate_rules(dirs, conditional, head, family, group: list[int], everyone: bool, tol):
    """Gating directions of duplicates (``everyone``: they are all the live components) and the
    first-order-only split directions (conditional), as derived in the module docstring."""
    where = f"components {group}"
    width = head.weight.shape[1] + 1
    logits = _full_logit_rows(head, family)
    scale = max(head.scale, np.finfo(float).tiny)
    same_slopes = np.abs(logits[group, :-1] - logits[group[0], :-1]).max() <= tol * scale
    ref, others = group[0], group[1:]
    if everyone:  # the mixture depends on no gating difference among them
        gating = [
            v
            for a in others
            for d in range(width)
            for v in _logit_shift(dirs, head, family, {a: _unit_vector(width, d)})
        ]
        dirs.add(DUPLICATE_GATING, where, gating)
    if not same_slopes:
        return  # weight ratios vary with x: no exact trade, and no split the head can follow
    share = np.exp(logits[group, -1] - logits[group, -1].max())
    share = dict(zip(group, share / share.sum(), strict=True))
    if not everyone:
        bias = [v for a in others for v in _trade(dirs, head, family, a, ref, share, width - 1)]
        dirs.add(DUPLICATE_GATING, where, bias)
    split = []
    for a in others:
        block_a = _head_block(head, _component_rows(family, a))
        block_ref = _head_block(head, _component_rows(family, ref))
        for ia, ir in zip(block_a, block_ref, strict=True):  # theta_a + t_ref c, theta_ref - t_a c
            split.append(dirs.sparse({ia: share[ref], ir: -share[a]}))
        if not everyone:
            split += [
                v for d in range(width - 1) for v in _trade(dirs, head, family, a, ref, share, d)
            ]
    conditional.add(DUPLICATE_SPLIT, where, split)


def _mixture_rules(dirs, conditional, module, head, raw, weight_tol, tol) -> None:
    family = module.family
    weights = family.mixture(raw).mixture_distribution.probs.detach().numpy()
    zero = _zero_weight_rules(dirs, head, family, weights, weight_tol)
    live = [k for k in range(family.n_components) if k not in zero]
    for group in _duplicate_groups(head, family, live, tol):
        _duplicate_rules(dirs, conditional, head, family, group, len(group) == len(live), tol)


# --- the catch-all: the network's raw-output Jacobian ------------------------------------
def _raw_jacobian_rows(module, u: torch.Tensor) -> torch.Tensor:
    """(rows x R, P): d raw(u_i) / d theta in theta's order (zero columns for any parameter
    outside module.net)."""
    named = list(module.named_parameters())
    net = {n.removeprefix("net."): p.detach() for n, p in named if n.startswith("net.")}

    def raw(params):
        return torch.func.functional_call(module.net, params, (u,))

    jac = torch.func.jacrev(raw)(net)
    n_rows = u.shape[0] * module.net[-1].out_features
    blocks = [
        jac[n.removeprefix("net.")].reshape(n_rows, -1)
        if n.startswith("net.")
        else torch.zeros(n_rows, p.numel(), dtype=torch.float64)
        for n, p in named
    ]
    return torch.cat(blocks, dim=1).to(torch.float64)


def _jacobian_null(module, x: torch.Tensor, n_params: int, tol: float) -> np.ndarray:
    """Null space (columns, theta order) of the raw outputs' Jacobian over the distinct
    training inputs, from a QR factor accumulated over row chunks (P x P memory)."""
    inputs = module.x_scaler(torch.unique(x, dim=0)).detach()
    r_factor = torch.zeros(0, n_params, dtype=torch.float64)
    for start in range(0, inputs.shape[0], JACOBIAN_CHUNK_ROWS):
        rows = _raw_jacobian_rows(module, inputs[start : start + JACOBIAN_CHUNK_ROWS])
        r_factor = torch.linalg.qr(torch.cat([r_factor, rows]), mode="r").R
    return _null_space(r_factor.numpy(), tol)


# --- the prediction --------------------------------------------------------------------------
def predicted_null_dimension(
    module,
    x_train,
    tol: float = DEFAULT_TOL,
    weight_tol: float = DEFAULT_WEIGHT_TOL,
    jacobian: bool = True,
) -> NullPrediction:
    """Structural null directions of A for ``module`` (an MDNModule) on inputs ``x_train``
    (original units, (n, in_dim)); see the module docstring for the rules and thresholds."""
    x = torch.as_tensor(np.asarray(x_train), dtype=torch.float64)
    linears = _linears(module)
    n_params = sum(p.numel() for p in module.parameters())
    dirs, conditional = _Directions(n_params), _Directions(n_params)
    with torch.enable_grad():
        hidden, last_inputs, raw = _hidden_layers(module, x)
    _mixture_rules(dirs, conditional, module, linears[-1], raw, weight_tol, tol)
    for depth, layer in enumerate(hidden):
        _layer_rules(dirs, layer, linears[depth], linears[depth + 1], depth, tol)
    head = linears[-1]
    every_row = np.ones(last_inputs.shape[0], dtype=bool)
    rows = [(k, every_row) for k in range(head.weight.shape[0])]
    _unseen_rules(dirs, last_inputs, head, rows, "head", tol)
    if jacobian:
        other = _jacobian_null(module, x, n_params, tol)
        dirs.add(OTHER, "network", list(other.T))
    breakdown, basis = _incremental_ranks(dirs.groups, np.zeros((n_params, 0)), tol)
    extra, _ = _incremental_ranks(conditional.groups, basis, tol)
    return NullPrediction(sum(e.count for e in breakdown), breakdown, n_params, extra, basis)
