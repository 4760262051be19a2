"""Synthetic data sets whose conditional density p(y | x) is known exactly.

Every simulator draws (x, y) pairs and evaluates the true log p(y | x) in nats, so that a fitted
model's held-out log-likelihood can be compared with the best achievable value (the negative
conditional entropy) and its KL divergence from the truth estimated without bias.

Only numpy and scipy are used, so the data-preparation step never imports torch. The
elementary functions and small matrix products come from ``mdnlab.data.portable``, not numpy's
CPU-dispatched ones, so that the written data have the same bytes on every x86-64 CPU
(docs/reliability.md, "Reproducible data").
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import betaln, gammaln

from mdnlab.data import portable as pm
from mdnlab.data.table import lower_triangle_names

_LOG_2PI = float(pm.log(2.0 * np.pi))


def _as_2d(a: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1); (n, k) unchanged; always float64."""
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def _uniform_x(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=(n, 1))


def _pick_components(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of an (n, K) weight matrix (inverse-CDF on a uniform)."""
    u = rng.uniform(size=(weights.shape[0], 1))
    cdf = np.cumsum(weights, axis=1)
    return np.minimum((u > cdf).sum(axis=1), weights.shape[1] - 1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = pm.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Simulator(ABC):
    """A joint distribution of (x, y) with a tractable conditional density p(y | x).

    ``sample`` returns x of shape (n, d) and y of shape (n, q), float64; ``log_prob(x, y)``
    returns the true log p(y | x) of shape (n,) in nats. ``sample_y`` draws y given fixed x.
    """

    name: str
    x_cols: list[str]
    y_cols: list[str]
    description: str = field(default="", compare=False)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = _uniform_x(n, rng)
        return x, self.sample_y(x, rng)

    @abstractmethod
    def sample_y(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...

    @abstractmethod
    def log_prob(self, x: np.ndarray, y: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# a. synth_mixture: 1-d, three x-dependent Gaussian components
# --------------------------------------------------------------------------------------------


def mixture1d_params(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means, standard deviations of ``synth_mixture``, each of shape (n, 3)."""
    x = _as_2d(x)[:, :1]
    logits = np.hstack([-1.5 * x, np.full_like(x, 0.3), 1.5 * x])
    means = np.hstack(
        [-1.5 + 0.4 * pm.sin(np.pi * x), 0.3 * pm.sin(2 * np.pi * x), 1.4 + 0.3 * pm.cos(np.pi * x)]
    )
    sds = np.hstack([0.2 * pm.exp(0.5 * x), 0.15 * pm.exp(-0.4 * x), 0.25 * pm.exp(0.3 * x)])
    return _softmax(logits), means, sds


@dataclass(frozen=True)
class Mixture1D(Simulator):
    r"""x ~ U(-1, 1);  y | x ~ sum_k pi_k(x) N(mu_k(x), sigma_k(x)^2),  k = 1, 2, 3.

    pi(x)    = softmax(-1.5 x, 0.3, 1.5 x)
    mu(x)    = (-1.5 + 0.4 sin(pi x),  0.3 sin(2 pi x),  1.4 + 0.3 cos(pi x))
    sigma(x) = (0.2 exp(0.5 x),  0.15 exp(-0.4 x),  0.25 exp(0.3 x))

    Components are at least ~0.8 apart while sigma <= 0.34, so p(y | x) is visibly trimodal for
    most x. A 3-component Gaussian MDN is well specified.
    """

    def sample_y(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        w, mu, sd = mixture1d_params(x)
        k = _pick_components(w, rng)
        rows = np.arange(len(k))
        eps = rng.standard_normal(len(k))
        return (mu[rows, k] + sd[rows, k] * eps)[:, None]

    def log_prob(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        w, mu, sd = mixture1d_params(x)
        z = (_as_2d(y)[:, :1] - mu) / sd
        log_comp = -0.5 * z**2 - pm.log(sd) - 0.5 * _LOG_2PI
        return pm.logsumexp(pm.log(w) + log_comp, axis=1)


# --------------------------------------------------------------------------------------------
# b. synth_mixture2d: 2-d, three bivariate Gaussians with x-dependent correlation
# --------------------------------------------------------------------------------------------


def mixture2d_params(
    x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights (n, 3), means (n, 3, 2), standard deviations (n, 3, 2), correlations (n, 3)."""
    x = _as_2d(x)[:, :1]
    one = np.ones_like(x)
    # columns are components k = 1, 2, 3
    logits = np.hstack([x, 0.2 * one, -x])
    y1_mean = np.hstack([-1.0 + 0.5 * x, 1.0 + 0.5 * x, 0.5 * x])
    y2_mean = np.hstack(
        [-1.0 + 0.5 * pm.sin(np.pi * x), -0.8 + 0.6 * x, 1.2 + 0.3 * pm.cos(np.pi * x)]
    )
    y1_sd = np.hstack([0.3 * pm.exp(0.3 * x), 0.2 * one, 0.3 * one])
    y2_sd = np.hstack([0.25 * one, 0.35 * pm.exp(-0.3 * x), 0.2 * pm.exp(0.4 * x)])
    rho = np.hstack([0.8 * pm.tanh(2.0 * x), -0.5 * one, 0.3 * x])
    means = np.stack([y1_mean, y2_mean], axis=2)
    sds = np.stack([y1_sd, y2_sd], axis=2)
    return _softmax(logits), means, sds, rho


@dataclass(frozen=True)
class Mixture2D(Simulator):
    r"""x ~ U(-1, 1);  y | x ~ sum_k pi_k(x) N_2(m_k(x), S_k(x)),  k = 1, 2, 3,
    S_k = [[s_k1^2, rho_k s_k1 s_k2], [rho_k s_k1 s_k2, s_k2^2]].

    pi(x)  = softmax(x, 0.2, -x)
    m_1(x) = (-1 + 0.5 x, -1 + 0.5 sin(pi x)),  s_1 = (0.3 exp(0.3 x), 0.25),   rho_1 = 0.8 tanh(2x)
    m_2(x) = (1 + 0.5 x, -0.8 + 0.6 x),          s_2 = (0.2, 0.35 exp(-0.3 x)),  rho_2 = -0.5
    m_3(x) = (0.5 x, 1.2 + 0.3 cos(pi x)),       s_3 = (0.3, 0.2 exp(0.4 x)),    rho_3 = 0.3 x
    """

    def sample_y(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        w, mean, sd, rho = mixture2d_params(x)
        k = _pick_components(w, rng)
        rows = np.arange(len(k))
        m, s, r = mean[rows, k], sd[rows, k], rho[rows, k]
        e = rng.standard_normal((len(k), 2))
        y1 = m[:, 0] + s[:, 0] * e[:, 0]
        y2 = m[:, 1] + s[:, 1] * (r * e[:, 0] + np.sqrt(1.0 - r**2) * e[:, 1])
        return np.column_stack([y1, y2])

    def log_prob(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        w, mean, sd, rho = mixture2d_params(x)
        z = (_as_2d(y)[:, None, :2] - mean) / sd
        one_m_r2 = 1.0 - rho**2
        quad = (z[..., 0] ** 2 - 2 * rho * z[..., 0] * z[..., 1] + z[..., 1] ** 2) / one_m_r2
        log_det = 2 * pm.log(sd).sum(axis=2) + pm.log(one_m_r2)
        log_comp = -0.5 * quad - 0.5 * log_det - _LOG_2PI
        return pm.logsumexp(pm.log(w) + log_comp, axis=1)


# --------------------------------------------------------------------------------------------
# c. bishop: Bishop's (1994) inverse problem
# --------------------------------------------------------------------------------------------

BISHOP_NOISE = 0.1
_BISECTION_STEPS = 60
# g'(s) = 1 + 0.6 pi cos(2 pi s) vanishes at s1 and s2 = 1 - s1: g rises, falls, rises.
# arccos(-1 / (0.6 pi)) / (2 pi), written out: numpy's arccos may differ in the last bit by CPU.
_S1 = 0.33900099372132486
_PIECE_LO = np.array([0.0, _S1, 1.0 - _S1])
_PIECE_HI = np.array([_S1, 1.0 - _S1, 1.0])
_PIECE_SIGN = np.array([1.0, -1.0, 1.0])


def bishop_g(t: np.ndarray) -> np.ndarray:
    """g(t) = t + 0.3 sin(2 pi t)."""
    return t + 0.3 * pm.sin(2.0 * np.pi * t)


def _g_inverse(v: np.ndarray, piece: np.ndarray) -> np.ndarray:
    """The s in monotone piece ``piece`` (0, 1 or 2) with g(s) = v, elementwise, for v inside
    g's range on that piece: bisection on sign * g, which is increasing on the piece."""
    lo = _PIECE_LO[piece]
    width = _PIECE_HI[piece] - lo
    sign = _PIECE_SIGN[piece]
    target = sign * v
    mid = np.empty_like(lo)
    g_mid = np.empty_like(lo)
    for _ in range(_BISECTION_STEPS):
        width *= 0.5
        np.add(lo, width, out=mid)
        np.multiply(mid, 2.0 * np.pi, out=g_mid)
        g_mid[...] = pm.sin(g_mid)
        g_mid *= 0.3
        g_mid += mid
        g_mid *= sign
        np.copyto(lo, mid, where=g_mid < target)
    return lo + 0.5 * width


def bishop_support(x: np.ndarray) -> np.ndarray:
    """Support of p(t | x) as three (possibly empty) intervals, shape (n, 3, 2): for each
    monotone piece of g, the [start, end] of {s in piece : |x - g(s)| < 0.1}."""
    x = _as_2d(x)[:, 0]
    g_lo, g_hi = bishop_g(_PIECE_LO), bishop_g(_PIECE_HI)
    g_min, g_max = np.minimum(g_lo, g_hi)[:, None], np.maximum(g_lo, g_hi)[:, None]
    ends = np.stack([x - BISHOP_NOISE, x + BISHOP_NOISE], axis=1)[:, None, :]  # (n, 1, 2)
    v = np.clip(ends, g_min, g_max)  # (n, 3, 2)
    # Where v was clipped to g's value at a piece end, the inverse is that end: only the
    # interior values need bisection.
    s = np.where(v == bishop_g(_PIECE_LO)[:, None], _PIECE_LO[:, None], _PIECE_HI[:, None])
    interior = (v > g_min) & (v < g_max)
    piece = np.broadcast_to(np.arange(3)[:, None], v.shape)
    s[interior] = _g_inverse(v[interior], piece[interior])
    return np.sort(s, axis=2)


def bishop_measure(x: np.ndarray) -> np.ndarray:
    """m(x) = Lebesgue measure of {s in [0, 1] : |x - g(s)| < 0.1}, shape (n,)."""
    iv = bishop_support(x)
    return (iv[..., 1] - iv[..., 0]).sum(axis=1)


@dataclass(frozen=True)
class Bishop(Simulator):
    r"""Bishop (1994), the inverse problem: predict t from x.

    t ~ U(0, 1),  x = g(t) + u,  u ~ U(-0.1, 0.1),  g(t) = t + 0.3 sin(2 pi t).
    p(t | x) = 1{|x - g(t)| < 0.1, 0 <= t <= 1} / m(x),  m(x) = |{s in [0, 1] : |x - g(s)| < 0.1}|.

    The support is a union of up to three intervals (one per monotone piece of g), so p(t | x)
    is piecewise constant and up to trimodal; a Gaussian MDN is misspecified (hard edges).
    """

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        t = rng.uniform(0.0, 1.0, size=n)
        u = rng.uniform(-BISHOP_NOISE, BISHOP_NOISE, size=n)
        return (bishop_g(t) + u)[:, None], t[:, None]

    def sample_y(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """t uniform on the support of p(t | x): pick a point at arc length u * m(x)."""
        iv = bishop_support(x)
        lengths = iv[..., 1] - iv[..., 0]
        cum = np.cumsum(lengths, axis=1)
        u = rng.uniform(size=len(cum)) * cum[:, -1]
        k = np.minimum((u[:, None] >= cum).sum(axis=1), 2)
        rows = np.arange(len(k))
        before = cum[rows, k] - lengths[rows, k]
        return (iv[rows, k, 0] + (u - before))[:, None]

    def log_prob(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x1 = _as_2d(x)[:, 0]
        t = _as_2d(y)[:, 0]
        inside = (t >= 0.0) & (t <= 1.0) & (np.abs(x1 - bishop_g(t)) < BISHOP_NOISE)
        # x often repeats (e.g. density on a grid of t at fixed x): solve once per distinct x.
        x_unique, inverse = np.unique(x1, return_inverse=True)
        m = bishop_measure(x_unique)[inverse]
        with np.errstate(divide="ignore"):
            return np.where(inside & (m > 0), -pm.log(m), -np.inf)


# --------------------------------------------------------------------------------------------
# d. synth_heavytail: misspecified, skewed heavy-tailed noise (Jones-Faddy skew-t)
# --------------------------------------------------------------------------------------------

# a = 2.5 gives a left tail like Student-t with 5 df: heavy, yet E|eps|^4 < inf, which a
# Gaussian-likelihood sandwich covariance needs. b = 5 > a makes the noise negatively skewed.
JF_A = 2.5
JF_B = 5.0


def _jf_raw_moment(power: int, a: float, b: float) -> float:
    """E[T^power], power in {1, 2}, for T = sqrt(a+b)(2B-1)/(2 sqrt(B(1-B))), B ~ Beta(a, b)."""
    ab = a + b
    if power == 1:
        num = 2 * pm.exp(betaln(a + 0.5, b - 0.5)) - pm.exp(betaln(a - 0.5, b - 0.5))
        return float(np.sqrt(ab) / 2 * num / pm.exp(betaln(a, b)))
    # (2B - 1)^2 / (B(1 - B)) = 1 / (B(1 - B)) - 4
    return float(ab / 4 * (pm.exp(betaln(a - 1, b - 1) - betaln(a, b)) - 4))


JF_MEAN = _jf_raw_moment(1, JF_A, JF_B)
JF_SD = float(np.sqrt(_jf_raw_moment(2, JF_A, JF_B) - JF_MEAN**2))


def jf_skew_t_logpdf(t: np.ndarray, a: float, b: float) -> np.ndarray:
    """Log density of the Jones-Faddy skew-t (scipy.stats.jf_skew_t), stable in both tails.

    With r = sqrt(a+b+t^2): 1 + t/r = (r+t)/r and 1 - t/r = (r-t)/r, and (r+t)(r-t) = a+b, so
    whichever of r+t, r-t would cancel catastrophically is computed as a+b over the other.
    """
    c = a + b
    r = np.sqrt(c + t * t)
    log_plus = pm.log(np.where(t >= 0, r + t, c / (r + np.abs(t))))
    log_minus = pm.log(c) - log_plus
    log_r = pm.log(r)
    log_norm = (c - 1) * pm.log(2.0) + betaln(a, b) + 0.5 * pm.log(c)
    return (a + 0.5) * (log_plus - log_r) + (b + 0.5) * (log_minus - log_r) - log_norm


def heavytail_loc_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu(x) = 0.8 sin(pi x) + 0.3 x and s(x) = 0.25 exp(0.6 x), each (n,)."""
    x1 = _as_2d(x)[:, 0]
    return 0.8 * pm.sin(np.pi * x1) + 0.3 * x1, 0.25 * pm.exp(0.6 * x1)


@dataclass(frozen=True)
class HeavyTail(Simulator):
    r"""Misspecified for any finite Gaussian mixture: skewed, heavy-tailed noise.

    x ~ U(-1, 1),  y = mu(x) + s(x) eps,  eps = (T - E T) / sd(T),  T ~ JF skew-t(a=2.5, b=5),
    mu(x) = 0.8 sin(pi x) + 0.3 x,  s(x) = 0.25 exp(0.6 x),
    so E[y | x] = mu(x), sd(y | x) = s(x), and
    log p(y | x) = log f_T(E T + sd(T) (y - mu(x)) / s(x)) + log sd(T) - log s(x),
    f_T(t) = (1 + t/r)^(a+1/2) (1 - t/r)^(b+1/2) / (2^(a+b-1) B(a,b) sqrt(a+b)), r = sqrt(a+b+t^2).
    T = sqrt(a+b) (2B - 1) / (2 sqrt(B(1-B))) with B ~ Beta(a, b) (Jones & Faddy, 2003).
    """

    def sample_y(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mu, s = heavytail_loc_scale(x)
        beta = rng.beta(JF_A, JF_B, size=len(mu))
        t = np.sqrt(JF_A + JF_B) * (2 * beta - 1) / (2 * np.sqrt(beta * (1 - beta)))
        return (mu + s * (t - JF_MEAN) / JF_SD)[:, None]

    def log_prob(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        mu, s = heavytail_loc_scale(x)
        t = JF_MEAN + JF_SD * (_as_2d(y)[:, 0] - mu) / s
        return jf_skew_t_logpdf(t, JF_A, JF_B) + pm.log(JF_SD) - pm.log(s)


# --------------------------------------------------------------------------------------------
# f. synth_latent_class: two discrete outputs from a 2-class latent-class regression
# --------------------------------------------------------------------------------------------

LATENT_CLASS_N_CLASSES = (3, 2)


def latent_class_params(x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Weights (n, 2) and, per output d, class probabilities (n, 2, C_d) of
    ``synth_latent_class``; every logit is linear in x and the last one is 0."""
    x = _as_2d(x)[:, :1]
    zero = np.zeros_like(x)
    weights = _softmax(np.hstack([0.2 + 1.2 * x, zero]))
    # y1: 3 classes; latent class 1 favours codes 0 and 1, latent class 2 code 2.
    y1 = np.stack(
        [
            _softmax(np.hstack([1.5 + 1.0 * x, 0.5 - 1.0 * x, zero])),
            _softmax(np.hstack([-1.5 + 0.5 * x, -0.5 + 1.5 * x, zero])),
        ],
        axis=1,
    )
    # y2: 2 classes; latent class 1 favours code 0, latent class 2 code 1.
    y2 = np.stack(
        [_softmax(np.hstack([1.5 + 0.5 * x, zero])), _softmax(np.hstack([-1.5 - 1.0 * x, zero]))],
        axis=1,
    )
    return weights, [y1, y2]


@dataclass(frozen=True)
class LatentClass(Simulator):
    r"""x ~ U(-1, 1);  latent class k ~ pi(x);  y1, y2 independent given (k, x):

    p(y | x) = sum_k pi_k(x) p_k1(y1 | x) p_k2(y2 | x),  k = 1, 2,  y1 in {0, 1, 2}, y2 in {0, 1},
    pi(x)       = softmax(0.2 + 1.2 x, 0)
    p_11(. | x) = softmax(1.5 + x, 0.5 - x, 0), p_21(. | x) = softmax(-1.5 + 0.5 x, -0.5 + 1.5 x, 0)
    p_12(. | x) = softmax(1.5 + 0.5 x, 0),      p_22(. | x) = softmax(-1.5 - x, 0)

    Every logit is linear in x with the last one fixed at 0, which is exactly the categorical
    MDN's parameterisation with K = 2 and a linear head (hidden_sizes []): well specified.
    y holds the integer class codes (as floats).
    """

    def sample_y(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        w, probs = latent_class_params(x)
        k = _pick_components(w, rng)
        rows = np.arange(len(k))
        return np.column_stack([_pick_components(p[rows, k], rng) for p in probs]).astype(
            np.float64
        )

    def log_prob(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        w, probs = latent_class_params(x)
        codes = _as_2d(y).astype(np.int64)
        rows = np.arange(codes.shape[0])
        log_comp = sum(pm.log(p[rows, :, codes[:, d]]) for d, p in enumerate(probs))
        return pm.logsumexp(pm.log(w) + log_comp, axis=1)

    def quantities(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``prob[d,c]``: the true marginal probability of class c of y_d at x, each (n,)."""
        w, probs = latent_class_params(x)
        return {
            f"prob[{d},{c}]": (w * p[:, :, c]).sum(axis=1)
            for d, p in enumerate(probs)
            for c in range(p.shape[2])
        }


# --------------------------------------------------------------------------------------------
# e. synth_wishart: 3 x 3 SPD matrices from a 2-component Wishart mixture
# --------------------------------------------------------------------------------------------

WISHART_P = 3


def wishart_params(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights (n, 2), degrees of freedom (n, 2) and Cholesky factors (n, 2, 3, 3) of the
    component scale matrices S_k = C_k C_k' / df_k of ``synth_wishart``."""
    x1 = _as_2d(x)[:, 0]
    one, zero = np.ones_like(x1), np.zeros_like(x1)
    weights = _softmax(np.column_stack([0.4 + 1.5 * x1, zero]))
    df = np.column_stack([6.0 + 2.0 * x1, 12.0 - 3.0 * x1])
    c1 = np.stack(
        [
            np.stack([1.0 + 0.3 * x1, zero, zero], axis=1),
            np.stack([0.6 * x1, 0.8 * one, zero], axis=1),
            np.stack([0.3 * one, 0.4 * pm.sin(np.pi * x1), 0.6 * pm.exp(0.3 * x1)], axis=1),
        ],
        axis=1,
    )
    c2 = np.stack(
        [
            np.stack([0.6 * one, zero, zero], axis=1),
            np.stack([-0.5 * one, 1.2 * pm.exp(-0.3 * x1), zero], axis=1),
            np.stack([0.5 * pm.cos(0.5 * np.pi * x1), -0.3 * x1, 0.9 * one], axis=1),
        ],
        axis=1,
    )
    chol = np.stack([c1, c2], axis=1) / np.sqrt(df)[:, :, None, None]
    return weights, df, chol


def wishart_logpdf(y: np.ndarray, df: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """log Wishart(y; df, L L') for y (..., p, p), df (...), chol L (..., p, p), broadcasting;
    the closed form of ``scipy.stats.wishart.logpdf``, vectorised over scale matrices."""
    p = y.shape[-1]
    # tr(S^-1 y) with S = L L': tr(L^-T L^-1 y) = sum_ij (L^-1)_ij (L^-1 y)_ij.
    chol_inv = pm.lower_triangular_inverse(chol)
    trace = (chol_inv * pm.matmul(chol_inv, y)).sum(axis=(-2, -1))
    log_det_y = pm.log(pm.det3(y))
    log_det_s = 2.0 * pm.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
    log_gamma_p = 0.25 * p * (p - 1) * pm.log(np.pi) + sum(
        gammaln(0.5 * df - 0.5 * j) for j in range(p)
    )
    return (
        0.5 * (df - p - 1) * log_det_y
        - 0.5 * trace
        - 0.5 * df * p * pm.log(2.0)
        - 0.5 * df * log_det_s
        - log_gamma_p
    )


def wishart_bartlett(df: np.ndarray, chol: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One Wishart(df_i, L_i L_i') draw per row (Bartlett decomposition, as scipy's sampler):
    Y = L A A' L', A lower triangular, A_jj^2 ~ chi2(df - j), A_ij ~ N(0, 1) below."""
    n, p = chol.shape[0], chol.shape[-1]
    a = np.zeros((n, p, p))
    rows, cols = np.tril_indices(p, -1)
    a[:, rows, cols] = rng.standard_normal((n, len(rows)))
    diag = np.arange(p)
    a[:, diag, diag] = np.sqrt(rng.chisquare(df[:, None] - diag[None, :]))
    la = pm.matmul(chol, a)
    return pm.matmul(la, np.swapaxes(la, 1, 2))


@dataclass(frozen=True)
class WishartMixture(Simulator):
    r"""x ~ U(-1, 1);  Y | x ~ sum_k pi_k(x) Wishart_3(df_k(x), S_k(x)),  k = 1, 2,
    S_k = C_k C_k' / df_k, so that E[Y | x, k] = C_k(x) C_k(x)'.

    pi(x)  = softmax(0.4 + 1.5 x, 0);   df_1 = 6 + 2 x,  df_2 = 12 - 3 x  (> p - 1 = 2)
    C_1(x) = [[1 + 0.3 x, 0, 0], [0.6 x, 0.8, 0], [0.3, 0.4 sin(pi x), 0.6 exp(0.3 x)]]
    C_2(x) = [[0.6, 0, 0], [-0.5, 1.2 exp(-0.3 x), 0], [0.5 cos(pi x / 2), -0.3 x, 0.9]]

    Component 1 has a large, x-dependent y[0,0] and a correlation of y[0] with y[1] that
    changes sign with x; component 2 is more concentrated (larger df) with a fixed negative
    one. y has shape (n, 3, 3); its CSV columns are the lower triangle in row-major order.
    """

    def sample_y(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        w, df, chol = wishart_params(x)
        k = _pick_components(w, rng)
        rows = np.arange(len(k))
        return wishart_bartlett(df[rows, k], chol[rows, k], rng)

    def log_prob(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        w, df, chol = wishart_params(x)
        y = np.asarray(y, dtype=np.float64).reshape(-1, 1, WISHART_P, WISHART_P)
        return pm.logsumexp(pm.log(w) + wishart_logpdf(y, df, chol), axis=1)

    def quantities(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``mean[i,j]`` (j <= i): the true E[Y_ij | x] = sum_k pi_k (C_k C_k')_ij, each (n,)."""
        w, df, chol = wishart_params(x)
        outer = pm.matmul(chol, np.swapaxes(chol, -1, -2))
        mean = ((w * df)[:, :, None, None] * outer).sum(axis=1)
        return {f"mean[{i},{j}]": mean[:, i, j] for i in range(WISHART_P) for j in range(i + 1)}


# --------------------------------------------------------------------------------------------
# Registry and writer
# --------------------------------------------------------------------------------------------

SIMULATORS: dict[str, Simulator] = {
    "synth_mixture": Mixture1D(
        "synth_mixture",
        ["x"],
        ["y"],
        "x~U(-1,1); y|x ~ 3-component Gaussian mixture, softmax-linear weights, sin/cos means, "
        "exp-linear sds (well specified for a 3-component MDN)",
    ),
    "synth_mixture2d": Mixture2D(
        "synth_mixture2d",
        ["x"],
        ["y1", "y2"],
        "x~U(-1,1); y|x ~ 3-component bivariate Gaussian mixture with full covariance, "
        "rho_1 = 0.8 tanh(2x)",
    ),
    "bishop": Bishop(
        "bishop",
        ["x"],
        ["t"],
        "Bishop (1994) inverse problem: t~U(0,1), x = t + 0.3 sin(2 pi t) + U(-0.1,0.1); "
        "p(t|x) uniform on {t: |x - g(t)| < 0.1}",
    ),
    "synth_heavytail": HeavyTail(
        "synth_heavytail",
        ["x"],
        ["y"],
        "x~U(-1,1); y = 0.8 sin(pi x) + 0.3 x + 0.25 exp(0.6 x) eps, eps standardised "
        "Jones-Faddy skew-t(2.5, 5) (misspecified for Gaussian mixtures)",
    ),
    "synth_latent_class": LatentClass(
        "synth_latent_class",
        ["x"],
        ["y1", "y2"],
        "x~U(-1,1); y1 in {0,1,2}, y2 in {0,1} independent given a latent class k in {1,2}; "
        "softmax-linear weights and class probabilities (well specified for a 2-component "
        "categorical MDN with a linear head)",
    ),
    "synth_wishart": WishartMixture(
        "synth_wishart",
        ["x"],
        lower_triangle_names(WISHART_P),
        "x~U(-1,1); Y|x (3x3 SPD) ~ 2-component Wishart mixture, softmax-linear weights, "
        "df 6+2x and 12-3x, smooth x-dependent scale matrices (E[Y|x,k] = C_k(x) C_k(x)')",
    ),
}


def write_dataset(name: str, out_dir: Path, n: int, seed: int, eval_n: int, eval_seed: int) -> None:
    """Write ``data.csv`` (n training rows), ``eval.npz`` (x, y, log_p for eval_n rows from an
    independent generator) and ``truth.json`` into out_dir. Same arguments -> same bytes."""
    sim = SIMULATORS[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    x, y = sim.sample(n, np.random.default_rng(seed))
    if y.ndim == 3:
        # Matrix targets: the CSV holds the lower triangle in row-major order (y_cols);
        # eval.npz keeps the (n, p, p) matrices.
        rows, cols = np.tril_indices(y.shape[1])
        y = y[:, rows, cols]
    frame = pd.DataFrame(np.hstack([x, y]), columns=sim.x_cols + sim.y_cols)
    frame.to_csv(out_dir / "data.csv", index=False, float_format="%.17g", lineterminator="\n")

    x_eval, y_eval = sim.sample(eval_n, np.random.default_rng(eval_seed))
    log_p = sim.log_prob(x_eval, y_eval)
    # np.savez stamps zip members with a fixed 1980 date, so the bytes are reproducible.
    np.savez_compressed(out_dir / "eval.npz", x=x_eval, y=y_eval, log_p=log_p)

    truth = {
        "name": name,
        "n": n,
        "seed": seed,
        "eval_n": eval_n,
        "eval_seed": eval_seed,
        "x_cols": sim.x_cols,
        "y_cols": sim.y_cols,
        "description": sim.description,
    }
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
