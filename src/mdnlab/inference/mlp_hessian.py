"""Exact Hessian of the summed NLL for the MLPs of ``mdnlab.nets``, by blocks of matmuls.

The loss depends on the weights only through the raw head outputs o = net(u) (R of them per
row), so everything family-specific is the per-row gradient g = dL/do and Hessian
H = d^2 L/do^2 (R x R) of L = -log q, taken by autograd through ``module.log_prob`` itself (a
hook on ``module.net`` swaps its output for a leaf), so every family that goes through
``Family.mixture(raw)`` works unchanged. The network part is written out by hand.

Notation (per row; layers l = 1..L; layer l maps h_{l-1} (width d_{l-1}) to z_l (width w_l);
h_l = s(z_l) for l < L, o = z_L; ~h = [h; 1] so that z_l = ~W_l ~h_{l-1}, ~W_l = [W_l b_l];
D_l = diag(s'(z_l))):

    delta_L = g,  Hz_L = H
    delta_l = s'(z_l) * (W_{l+1}' delta_{l+1})
    Hz_l    = D_l W_{l+1}' Hz_{l+1} W_{l+1} D_l + diag(s''(z_l) * (W_{l+1}' delta_{l+1}))

Hz_l is the exact Hessian of L in z_l. With J_{m<-l} = dz_m/dz_l (J_{l<-l} = I), for l <= m

    d^2 L / d~W_l[a,b] d~W_m[c,d] = (Hz_m J_{m<-l})[c,a] ~h_{l-1}[b] ~h_{m-1}[d]
          + [l < m and d < d_{m-1}] delta_m[c] (D_{m-1} J_{m-1<-l})[d,a] ~h_{l-1}[b]

The first term is Kronecker-structured: summed over rows it is ONE matmul
(rows x w_l w_m)' @ (rows x ~d_{l-1} ~d_{m-1}) per block, ~2 n P_l P_m flops (a quarter of
that on the diagonal blocks, whose two factors are symmetric); the second is diagonal in
(d, a) for adjacent layers and one more matmul of the same size otherwise. Rows are taken in
chunks under a byte budget, so per-row arrays never hold all n rows. The code names the pair
of layers (i, j), i <= j, counted from 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mdnlab.inference.functional import FlatModel, _Call
from mdnlab.nets import ACTIVATIONS

# Bytes of per-row arrays (activations, Hz, Jacobians, one block's factors) held at once.
CHUNK_BUDGET_BYTES = 256 * 2**20
ELEMENTWISE = tuple(ACTIVATIONS.values())


class _Plan:
    """Where each Linear's weight and bias sit in theta, and which blocks are free."""

    def __init__(self, linears, activations, free_layers, offsets):
        self.linears = linears  # [(weight_name, bias_name)] in layer order
        self.activations = activations  # len(linears) - 1 elementwise modules
        self.free = free_layers  # indices of layers whose weights are in theta
        self.offsets = offsets  # layer -> (offset of weight in theta, offset of bias)


def plan_for(flat: FlatModel) -> _Plan | None:
    """The layer plan when ``flat.module.net`` is an MLP as ``nets.mlp`` builds, else None."""
    net = getattr(flat.module, "net", None)
    if not isinstance(net, nn.Sequential):
        return None
    children = list(net.named_children())
    if len(children) % 2 != 1:
        return None
    linears, activations = [], []
    for index, (name, layer) in enumerate(children):
        if index % 2 == 0:
            if type(layer) is not nn.Linear or layer.bias is None:
                return None
            linears.append((f"net.{name}.weight", f"net.{name}.bias"))
        else:
            if not isinstance(layer, ELEMENTWISE):
                return None
            activations.append(layer)
    names = [n for pair in linears for n in pair]
    if flat.free == names:
        free = list(range(len(linears)))
    elif flat.free == names[-2:]:
        free = [len(linears) - 1]
    else:
        return None
    starts, start = {}, 0
    for name, shape in zip(flat.free, flat.shapes, strict=True):
        starts[name] = start
        start += shape.numel()
    offsets = {i: (starts[linears[i][0]], starts[linears[i][1]]) for i in free}
    for i in free:  # weight then bias, adjacent in theta (nn.Linear's parameter order)
        if offsets[i][1] != offsets[i][0] + net[2 * i].weight.numel():
            return None
    return _Plan(linears, activations, free, offsets)


def _activation_derivatives(act: nn.Module, z: torch.Tensor):
    """s'(z), s''(z) elementwise, by autograd on the module itself (exactly what the loop sees)."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        (first,) = torch.autograd.grad(act(z).sum(), z, create_graph=True)
        if first.requires_grad:
            (second,) = torch.autograd.grad(first.sum(), z, allow_unused=True)
        else:
            second = None
    return first.detach(), (torch.zeros_like(z) if second is None else second.detach())


def _head_terms(flat: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Input u to the net, its output o, and per-row g (rows, R) and H (rows, R, R) of -log q."""
    seen: dict[str, list] = {"u": [], "o": []}

    def before(_module, args):
        seen["u"].append(args[0].detach())

    def after(_module, _args, out):
        leaf = out.detach().requires_grad_(True)
        seen["o"].append(leaf)
        return leaf

    net = flat.module.net
    handles = [net.register_forward_pre_hook(before), net.register_forward_hook(after)]
    try:
        with torch.enable_grad():
            from torch.func import functional_call

            log_q = functional_call(
                _Call(flat.module, "objective_log_prob"), flat._state(theta), (x, y)
            )
            if len(seen["o"]) != 1:
                return None
            o = seen["o"][0]
            (g,) = torch.autograd.grad(-log_q.sum(), o, create_graph=True)
            rows, r = o.shape
            hess = o.new_zeros(rows, r, r)
            if g.requires_grad:
                for k in range(r):
                    (col,) = torch.autograd.grad(
                        g[:, k].sum(), o, retain_graph=k < r - 1, allow_unused=True
                    )
                    if col is not None:
                        hess[:, k] = col
    finally:
        for handle in handles:
            handle.remove()
    hess = (hess + hess.transpose(1, 2)) / 2
    return seen["u"][0], o.detach(), g.detach(), hess


def _row_bytes(widths: list[int], free: list[int]) -> int:
    """float64 bytes per row of the arrays one chunk holds (generous)."""
    n_layers = len(widths) - 1
    w = widths[1:]
    total = sum(widths) * 4 + sum(v * v for v in w)  # h, z, s', s''; Hz
    total += sum(w[j] * w[i] for j in range(n_layers) for i in range(j))  # Jacobians
    biggest = max(
        w[i] * w[j] + (widths[i] + 1) * (widths[j] + 1) + w[j] * (widths[i] + 1) + 2 * w[j] * w[i]
        for i in free
        for j in free
        if i <= j
    )
    return 8 * (total + 2 * biggest)


def mlp_hessian_sum(
    flat: FlatModel,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = 2048,
    budget_bytes: int = CHUNK_BUDGET_BYTES,
) -> torch.Tensor | None:
    """sum_i d^2 (-log q(y_i|x_i)) / d theta^2 (P, P) at ``flat.theta``, or None when the net
    is not an MLP of ``nets.mlp`` (or the module calls it other than once per log_prob)."""
    plan = plan_for(flat)
    if plan is None:
        return None
    theta = flat.theta.detach()
    state = flat._state(theta)
    weights = [state[f"module.{w}"] for w, _ in plan.linears]
    biases = [state[f"module.{b}"] for _, b in plan.linears]
    n_layers = len(weights)
    widths = [weights[0].shape[1]] + [w.shape[0] for w in weights]  # d_0, w_1, ..., w_L
    free = plan.free
    rows = max(1, min(chunk, budget_bytes // _row_bytes(widths, free)))

    # acc[(i, j)]: (w_i * w_j, ~d_i * ~d_j), entry [(a, c), (b, d)] of block (i, j), i <= j.
    pairs = [(i, j) for i in free for j in free if i <= j]
    # Diagonal blocks (i, i): both factors are symmetric, so only a <= c and b <= d are formed
    # (a quarter of the flops): acc[(i, i)] is (w_i (w_i + 1) / 2, ~d_i (~d_i + 1) / 2).
    upper = {}
    for i in free:
        for size in (widths[i + 1], widths[i] + 1):
            if size not in upper:
                row, col = torch.triu_indices(size, size)
                upper[size] = row * size + col
    acc = {}
    for i, j in pairs:
        if i == j:
            shape = (upper[widths[i + 1]].numel(), upper[widths[i] + 1].numel())
        else:
            shape = (widths[i + 1] * widths[j + 1], (widths[i] + 1) * (widths[j] + 1))
        acc[(i, j)] = theta.new_zeros(shape)
    for start in range(0, x.shape[0], rows):
        terms = _head_terms(flat, theta, x[start : start + rows], y[start : start + rows])
        if terms is None:
            return None
        u, o, g, hess = terms
        c = u.shape[0]
        ones = u.new_ones(c, 1)
        # forward
        h_tilde, s1, s2, h = [], [], [], u
        for i in range(n_layers):
            h_tilde.append(torch.cat([h, ones], dim=1))
            z = F.linear(h, weights[i], biases[i])
            if i < n_layers - 1:
                d1, d2 = _activation_derivatives(plan.activations[i], z)
                s1.append(d1)
                s2.append(d2)
                h = plan.activations[i](z)
        if not torch.allclose(z, o, rtol=1e-12, atol=1e-12 * float(o.abs().max()) + 1e-300):
            return None  # the module does something to the net's output we do not model
        # backward: delta_i, Hz_i for the free layers and everything above them
        lowest = free[0]
        delta = {n_layers - 1: g}
        hz = {n_layers - 1: hess}
        hz_w = {}  # Hz_j W_j, (c, w_j, d_{j-1}), one folded GEMM each
        for j in range(n_layers - 1, lowest, -1):
            hz_w[j] = hz[j] @ weights[j]
            i = j - 1
            back = delta[j] @ weights[j]  # (c, w_i)
            delta[i] = s1[i] * back
            inner = hz_w[j].transpose(1, 2) @ weights[j]  # W' Hz W, Hz symmetric
            inner = s1[i][:, :, None] * inner * s1[i][:, None, :]
            inner.diagonal(dim1=1, dim2=2).add_(s2[i] * back)
            hz[i] = (inner + inner.transpose(1, 2)) / 2
        # D_k J_{k<-i} = dh_k / dz_i, (c, w_k, w_i), for free i < k < L (dh_i/dz_i = D_i)
        dh = {}
        for i in free:
            for k in range(i + 1, n_layers - 1):
                if k == i + 1:
                    z_from = weights[k] * s1[i][:, None, :]  # W_k D_i
                else:
                    z_from = weights[k] @ dh[(k - 1, i)]
                dh[(k, i)] = s1[k][:, :, None] * z_from
        for i, j in pairs:
            wi, wj, di, dj = widths[i + 1], widths[j + 1], widths[i] + 1, widths[j] + 1
            if i == j:
                left = hz[j].reshape(c, wi * wi)[:, upper[wi]]  # [a <= c]
                right = h_tilde[i][:, :, None] * h_tilde[i][:, None, :]
                right = right.reshape(c, di * di)[:, upper[di]]  # [b <= d]
                acc[(i, j)].addmm_(left.T, right)
                continue
            # Hz_j J_{j<-i} = (Hz_j W_j) dh_{j-1}/dz_i, transposed: (c, w_i, w_j), [a, c]
            if j == i + 1:
                left = (hz_w[j] * s1[i][:, None, :]).transpose(1, 2)
            else:
                left = (hz_w[j] @ dh[(j - 1, i)]).transpose(1, 2)
            right = h_tilde[i][:, :, None] * h_tilde[j][:, None, :]  # (c, ~d_i, ~d_j)
            acc[(i, j)].addmm_(left.reshape(c, wi * wj).T, right.reshape(c, di * dj))
            # delta_j[c] (D_{j-1} J_{j-1<-i})[d, a] ~h_{i-1}[b], d over the non-bias inputs
            outer = (delta[j][:, :, None] * h_tilde[i][:, None, :]).reshape(c, wj * di)
            view = acc[(i, j)].view(wi, wj, di, dj)
            if j == i + 1:
                extra = (outer.T @ s1[i]).view(wj, di, wi)  # [c, b, a], only d == a
                view.diagonal(dim1=0, dim2=3).add_(extra)
            else:
                factor = dh[(j - 1, i)].reshape(c, -1)  # [d, a]
                extra = (outer.T @ factor).view(wj, di, widths[j], wi)  # [c, b, d, a]
                view[..., : dj - 1].add_(extra.permute(3, 0, 1, 2))

    p = theta.numel()
    hessian = theta.new_empty(p, p)  # every entry is written below
    for i, j in pairs:
        wi, wj, di, dj = widths[i + 1], widths[j + 1], widths[i] + 1, widths[j] + 1
        if i == j:  # [a, c, b, d] = sym[(min(a, c), max(a, c)), (min(b, d), max(b, d))]
            sym = acc.pop((i, j))
            block = sym[_symmetric_index(wi)][:, _symmetric_index(di)]
            del sym
            block = block.view(wi, wj, di, dj).permute(0, 2, 1, 3)
        else:
            block = acc.pop((i, j)).view(wi, wj, di, dj).permute(0, 2, 1, 3)  # [a, b, c, d]
        wi_at, bi_at = plan.offsets[i]
        wj_at, bj_at = plan.offsets[j]
        rows_w, rows_b = slice(wi_at, wi_at + wi * (di - 1)), slice(bi_at, bi_at + wi)
        cols_w, cols_b = slice(wj_at, wj_at + wj * (dj - 1)), slice(bj_at, bj_at + wj)
        parts = [
            (rows_w, cols_w, block[:, :-1, :, :-1].reshape(wi * (di - 1), wj * (dj - 1))),
            (rows_w, cols_b, block[:, :-1, :, -1].reshape(wi * (di - 1), wj)),
            (rows_b, cols_w, block[:, -1, :, :-1].reshape(wi, wj * (dj - 1))),
            (rows_b, cols_b, block[:, -1, :, -1]),
        ]
        for r, s, values in parts:
            hessian[r, s] = values
            if i != j:
                hessian[s, r] = values.T
        del block, parts
    return hessian


def _symmetric_index(size: int) -> torch.Tensor:
    """(size * size,): position of (min(a, c), max(a, c)) in the row-major upper triangle."""
    row, col = torch.triu_indices(size, size)
    position = torch.empty(size, size, dtype=torch.long)
    position[row, col] = torch.arange(row.numel())
    position[col, row] = torch.arange(row.numel())
    return position.reshape(-1)
