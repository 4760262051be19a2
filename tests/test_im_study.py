"""The IM-test simulation study (``mdnlab.studies.im_size``) at a tiny size: its frame's shape
and the p-values it reports, for the well-specified teacher and the misspecified simulator."""

from __future__ import annotations

import numpy as np
import pytest

from mdnlab.estimation.adam import TrainerSettings
from mdnlab.studies.im_size import TRUTHS, im_test_study, summary

SHORT = TrainerSettings(max_epochs=400, patience=50)  # the polish finishes what Adam leaves

COLUMNS = [
    "replicate",
    "statistic",
    "df",
    "pvalue_asymptotic",
    "pvalue_bootstrap",
    "refits_used",
    "grad_norm",
    "seconds",
]


@pytest.mark.parametrize("truth", TRUTHS)
def test_im_test_study_tiny(truth):
    frame = im_test_study(truth, 2, 3, 200, seed=0, progress=False, trainer=SHORT, teacher_rows=500)
    assert len(frame) == 2
    assert set(COLUMNS) <= set(frame.columns)
    assert frame.replicate.tolist() == [0, 1]
    assert (frame.truth == truth).all()
    for column in ("pvalue_asymptotic", "pvalue_bootstrap"):
        assert ((frame[column] > 0) & (frame[column] <= 1)).all(), frame[column]
    assert (frame.refits_used >= 1).all() and (frame.refits_used <= 3).all()
    steps = frame.pvalue_bootstrap * (1 + frame.refits_used)
    np.testing.assert_allclose(steps, steps.round(), atol=1e-9)
    assert (frame.df >= 1).all() and np.isfinite(frame.statistic).all()
    assert (frame.grad_norm <= 1e-5).all()  # the polish's 1e-6, with room across platforms
    table = summary(frame)
    assert table.replicates.tolist() == [2]
