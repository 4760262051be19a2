"""Elementwise maths whose float64 results do not depend on the CPU.

numpy picks a vector implementation of ``exp``, ``log``, ``sin``... at import time from the
CPU's features (AVX-512, AVX2, baseline SSE), and the implementations differ in the last bit;
OpenBLAS picks matrix kernels the same way. Data written from them (the synthetic data sets)
then hash differently on another machine. The functions here are built only from operations
that IEEE 754 rounds exactly on every CPU (+, -, *, /, sqrt, rint, frexp, ldexp, comparisons),
each a separate numpy call so that no compiler can fuse them, in a fixed order: the same inputs
give the same bits everywhere. They are accurate to a few units in the last place (tests
compare them with numpy's), which is all a simulator needs; they are a few times slower.
"""

from __future__ import annotations

import math

import numpy as np

# Cody-Waite splits: the high parts have trailing zero bits, so k * HI is exact for the |k|
# that occur here (fdlibm's e_exp.c, e_log.c, k_rem_pio2.c constants).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_PIO2_1 = 1.57079632673412561417e00
_PIO2_2 = 6.07710050650619224932e-11
_PIO2_3 = 2.02226624879595063154e-21
_TWO_OVER_PI = 6.36619772367581382433e-01
_EXP_MAX = 709.782712893383973096
_EXP_MIN = -745.13321910194110842

# Taylor coefficients 1/i! (exp), and the odd series of 2 atanh(s) for log.
# (Exact integers, then one correctly rounded division each.)
_EXP_TERMS = [1.0 / math.factorial(i) for i in range(15)]
_EXPM1_TERMS = [1.0 / math.factorial(i + 1) for i in range(18)]
_ATANH_TERMS = [2.0 / (2 * i + 1) for i in range(1, 13)]
_SIN_TERMS = [(-1) ** i / math.factorial(2 * i + 1) for i in range(11)]
_COS_TERMS = [(-1) ** i / math.factorial(2 * i) for i in range(11)]


def _horner(z: np.ndarray, coefficients: list[float]) -> np.ndarray:
    """sum_i c_i z^i, highest power first."""
    acc = np.full_like(z, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        acc = acc * z + c
    return acc


def _float(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def exp(x) -> np.ndarray:
    """e^x: x = k ln 2 + r with |r| <= ln(2)/2, a degree-14 Taylor polynomial in r, times 2^k."""
    x = _float(x)
    finite = np.isfinite(x)
    xc = np.where(finite, np.clip(x, _EXP_MIN - 1.0, _EXP_MAX + 1.0), 0.0)
    k = np.rint(xc * _INV_LN2)
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    # ldexp in two steps: 2^k alone over- or underflows where the product does not.
    half = np.trunc(k / 2.0)
    out = np.ldexp(
        np.ldexp(_horner(r, _EXP_TERMS), half.astype(np.int64)), (k - half).astype(np.int64)
    )
    out = np.where(xc > _EXP_MAX, np.inf, np.where(xc < _EXP_MIN, 0.0, out))
    return np.where(finite, out, np.where(np.isnan(x), np.nan, np.where(x > 0, np.inf, 0.0)))


def expm1(x) -> np.ndarray:
    """e^x - 1, accurate near 0 (Taylor series for |x| < 1/2, exp(x) - 1 elsewhere)."""
    x = _float(x)
    small = np.abs(x) < 0.5
    xs = np.where(small, x, 0.0)
    series = xs * _horner(xs, _EXPM1_TERMS)
    return np.where(small, series, exp(np.where(small, 0.0, x)) - 1.0)


def log(x) -> np.ndarray:
    """Natural log: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(f / (2 + f)) for
    f = m - 1 (fdlibm's arrangement), plus e ln 2. log(0) = -inf, log(<0) = nan."""
    x = _float(x)
    ok = np.isfinite(x) & (x > 0)
    m, e = np.frexp(np.where(ok, x, 1.0))
    low = m < 0.70710678118654752440
    m = np.where(low, m * 2.0, m)
    e = (e - low).astype(np.float64)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    big_r = z * _horner(z, _ATANH_TERMS)
    hfsq = 0.5 * f * f
    out = e * _LN2_HI - ((hfsq - (s * (hfsq + big_r) + e * _LN2_LO)) - f)
    special = np.where(x == 0, -np.inf, np.where(x == np.inf, np.inf, np.nan))
    return np.where(ok, out, special)


def _reduce_pio2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x = k pi/2 + r, |r| <= pi/4 (to ~1e-20 for |x| < 1e5); k mod 4 as integers."""
    k = np.rint(x * _TWO_OVER_PI)
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    return r, np.mod(k, 4.0).astype(np.int64)


def _sin_cos_reduced(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = r * r
    return r * _horner(z, _SIN_TERMS), _horner(z, _COS_TERMS)


def _sin_or_cos(x, name: str, by_quadrant) -> np.ndarray:
    x = _float(x)
    finite = np.isfinite(x)
    if np.any(np.abs(x[finite]) > 1e5):
        raise ValueError(f"portable.{name}: arguments beyond 1e5 in magnitude are not supported")
    r, q = _reduce_pio2(np.where(finite, x, 0.0))
    s, c = _sin_cos_reduced(r)
    return np.where(finite, np.choose(q, by_quadrant(s, c)), np.nan)


def sin(x) -> np.ndarray:
    return _sin_or_cos(x, "sin", lambda s, c: [s, c, -s, -c])


def cos(x) -> np.ndarray:
    return _sin_or_cos(x, "cos", lambda s, c: [c, -s, -c, s])


def tanh(x) -> np.ndarray:
    """tanh x = -expm1(-2|x|) / (2 + expm1(-2|x|)), with x's sign."""
    x = _float(x)
    em = expm1(-2.0 * np.minimum(np.abs(x), 40.0))
    return np.copysign(-em / (2.0 + em), x)


def logsumexp(a, axis: int) -> np.ndarray:
    """log sum_i exp(a_i) along ``axis``, shifted by the maximum (as scipy.special.logsumexp)."""
    a = _float(a)
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    terms = np.moveaxis(exp(a - top), axis, 0)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    total = np.expand_dims(total, axis)
    return np.squeeze(log(total) + top, axis=axis)


def matmul(a, b) -> np.ndarray:
    """a @ b for stacks of small matrices (..., n, p) @ (..., p, m), summed in a fixed order
    (j = 0, 1, ...) instead of by a BLAS kernel chosen for the CPU."""
    a, b = _float(a), _float(b)
    out = a[..., :, 0, None] * b[..., None, 0, :]
    for j in range(1, a.shape[-1]):
        out = out + a[..., :, j, None] * b[..., None, j, :]
    return out


def lower_triangular_inverse(chol) -> np.ndarray:
    """L^-1 for stacks of lower-triangular (..., p, p) L, by forward substitution."""
    chol = _float(chol)
    p = chol.shape[-1]
    inv = np.zeros_like(chol)
    for col in range(p):
        inv[..., col, col] = 1.0 / chol[..., col, col]
        for row in range(col + 1, p):
            acc = chol[..., row, col] * inv[..., col, col]
            for j in range(col + 1, row):
                acc = acc + chol[..., row, j] * inv[..., j, col]
            inv[..., row, col] = -acc / chol[..., row, row]
    return inv


def det3(m) -> np.ndarray:
    """Determinant of stacks of 3 x 3 matrices (cofactor expansion along the first row)."""
    m = _float(m)
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
