"""mdnlab.data.portable against numpy/scipy (accuracy) and across numpy's, OpenBLAS's and
glibc's CPU dispatch (bit-identical data)."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp

from mdnlab.data import portable

SRC = Path(__file__).resolve().parents[1] / "src"


def ulps(got, want):
    want = np.asarray(want)
    return np.max(np.abs(got - want) / np.spacing(np.abs(want)))


@pytest.mark.parametrize(
    "name, low, high, max_ulps",
    [
        ("exp", -700.0, 700.0, 2),
        ("exp", -2.0, 2.0, 2),
        ("expm1", -2.0, 2.0, 3),
        ("expm1", -1e-6, 1e-6, 2),
        ("sin", -7.0, 7.0, 2),
        ("cos", -7.0, 7.0, 2),
        ("tanh", -5.0, 5.0, 4),
        ("tanh", -1e-6, 1e-6, 3),
    ],
)
def test_elementary_functions_match_numpy_to_a_few_ulps(name, low, high, max_ulps):
    x = np.random.default_rng(0).uniform(low, high, 100_000)
    got, want = getattr(portable, name)(x), getattr(np, name)(x)
    if name in ("sin", "cos"):
        # relative ulps blow up at the zeros: compare on the scale of the values (|.| <= 1)
        assert np.max(np.abs(got - want)) <= max_ulps * np.spacing(1.0)
    else:
        assert ulps(got, want) <= max_ulps


def test_log_matches_numpy_over_the_whole_exponent_range():
    x = np.exp(np.random.default_rng(1).uniform(-740.0, 709.0, 100_000))
    assert ulps(portable.log(x), np.log(x)) <= 2
    near_one = np.random.default_rng(2).uniform(0.5, 2.0, 100_000)
    assert np.max(np.abs(portable.log(near_one) - np.log(near_one))) <= 2 * np.spacing(1.0)


def test_special_values_follow_ieee():
    with np.errstate(all="ignore"):
        special = np.array([np.inf, -np.inf, np.nan, 800.0, -800.0, 0.0])
        np.testing.assert_array_equal(portable.exp(special), np.exp(special))
        logs = np.array([0.0, -1.0, np.inf, np.nan, 1.0, 5e-324])
        np.testing.assert_array_equal(portable.log(logs), np.log(logs))
    assert portable.exp(-740.0) == pytest.approx(np.exp(-740.0), rel=1e-3)  # subnormal
    np.testing.assert_array_equal(portable.tanh(np.array([0.0, 50.0, -50.0])), [0.0, 1.0, -1.0])


def test_logsumexp_matches_scipy():
    a = np.random.default_rng(3).normal(size=(10_000, 3)) * 10
    np.testing.assert_allclose(portable.logsumexp(a, axis=1), logsumexp(a, axis=1), atol=1e-13)
    rows = np.array([[-np.inf, -np.inf], [-np.inf, 0.0]])
    np.testing.assert_array_equal(portable.logsumexp(rows, axis=1), [-np.inf, 0.0])


def test_small_matrix_algebra_matches_numpy_linalg():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(100, 2, 3, 3)), rng.normal(size=(100, 1, 3, 4))
    np.testing.assert_allclose(portable.matmul(a, b), a @ b, atol=1e-14)
    chol = np.tril(rng.normal(size=(100, 3, 3))) + 3 * np.eye(3)
    np.testing.assert_allclose(
        portable.lower_triangular_inverse(chol), np.linalg.inv(chol), atol=1e-14
    )
    np.testing.assert_allclose(portable.det3(a), np.linalg.det(a), rtol=1e-12, atol=1e-13)


def test_simulators_call_no_cpu_dispatched_numpy_maths():
    source = (SRC / "mdnlab/data/simulators.py").read_text()
    found = re.findall(
        r"np\.(?:exp|expm1|log|log1p|sin|cos|tan|tanh|arc\w+|hypot|power|einsum|dot|matmul|linalg)\b"
        r"|\s@\s|scipy\.special import .*logsumexp",
        source,
    )
    assert found == [], f"use mdnlab.data.portable instead of {found}"


# numpy's vector paths (AVX-512, AVX2, baseline), OpenBLAS's kernels and glibc's FMA variants:
# each environment makes this machine behave like another x86-64 CPU.
CPU_LIKE = {
    "native": {},
    "avx2": {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL", "OPENBLAS_CORETYPE": "Haswell"},
    "sse": {
        "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL",
        "OPENBLAS_CORETYPE": "Prescott",
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX",
    },
}
WRITE_ALL = """
import sys
from pathlib import Path
from mdnlab.data.simulators import SIMULATORS, write_dataset
for i, name in enumerate(sorted(SIMULATORS)):
    write_dataset(name, Path(sys.argv[1]) / name, 300, i, 3000, 100 + i)
"""


def dataset_hashes(out: Path, env_extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NPY_DISABLE_CPU_FEATURES",)}
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-c", WRITE_ALL, str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return {
        str(p.relative_to(out)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def cpu_features_found() -> set[str]:
    from numpy._core._multiarray_umath import __cpu_features__

    return {name for name, present in __cpu_features__.items() if present}


def test_synthetic_data_have_the_same_bytes_whatever_the_cpu_dispatch(tmp_path):
    hashes = {label: dataset_hashes(tmp_path / label, env) for label, env in CPU_LIKE.items()}
    assert len(hashes["native"]) == 3 * 6
    assert hashes["avx2"] == hashes["native"]
    assert hashes["sse"] == hashes["native"]


def test_the_cpu_dispatch_check_would_see_numpys_differences(tmp_path):
    """Without mdnlab.data.portable the three environments really do disagree, so the test
    above can fail: np.exp on the same inputs, written as the simulators write floats."""
    if not {"AVX512F", "AVX2"} <= cpu_features_found():
        pytest.skip("needs a CPU with AVX-512 and AVX2 for numpy to dispatch differently")
    code = (
        "import hashlib, numpy as np; x = np.random.default_rng(0).uniform(0.1, 5, 100000);"
        "print([hashlib.md5(f(x).tobytes()).hexdigest() for f in (np.exp, np.log, np.tanh)])"
    )
    outs = set()
    for env_extra in CPU_LIKE.values():
        env = dict(os.environ, **env_extra)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        outs.add(done.stdout)
    assert len(outs) == 3
