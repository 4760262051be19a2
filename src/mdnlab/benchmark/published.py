"""Published test NLL on the UCI benchmark (nats per row, original units; lower is better).

(mean, spread) per method and dataset. The spread is the standard error over splits, except
for Deep Ensembles (as printed in the paper) and NGBoost (a standard deviation).

Sources: Gal & Ghahramani (ICML 2016) Table 1 for PBP and MC dropout (2016); the
DropoutUncertaintyExps repository's README for the MC dropout 2018 grid-search re-run;
Lakshminarayanan et al. (NeurIPS 2017) Table 1 for Deep Ensembles (5 nets); Duan et al.
(ICML 2020) Table 1 for NGBoost.
"""

from __future__ import annotations

METHODS = ("PBP", "MC dropout 2016", "MC dropout 2018", "Deep Ensembles", "NGBoost")
# The column the figure draws as a band and the summary compares against.
REFERENCE = "MC dropout 2018"

PUBLISHED_NLL = {
    "boston": ((2.57, 0.09), (2.46, 0.06), (2.40, 0.04), (2.41, 0.25), (2.43, 0.15)),
    "concrete": ((3.16, 0.02), (3.04, 0.02), (2.93, 0.02), (3.06, 0.18), (3.04, 0.17)),
    "energy": ((2.04, 0.02), (1.99, 0.02), (1.21, 0.01), (1.38, 0.22), (0.60, 0.45)),
    "kin8nm": ((-0.90, 0.01), (-0.95, 0.01), (-1.14, 0.01), (-1.20, 0.02), (-0.49, 0.02)),
    "naval": ((-3.73, 0.01), (-3.80, 0.01), (-4.45, 0.00), (-5.63, 0.05), (-5.34, 0.04)),
    "power": ((2.84, 0.01), (2.80, 0.01), (2.80, 0.01), (2.79, 0.04), (2.79, 0.11)),
    "protein": ((2.97, 0.00), (2.89, 0.00), (2.87, 0.00), (2.83, 0.02), (2.81, 0.03)),
    "wine": ((0.97, 0.01), (0.93, 0.01), (0.93, 0.01), (0.94, 0.12), (0.91, 0.06)),
    "yacht": ((1.63, 0.02), (1.55, 0.03), (1.25, 0.01), (1.18, 0.21), (0.20, 0.26)),
}


def published(dataset: str) -> dict[str, tuple[float, float]]:
    """method -> (mean, spread) for a dataset's short name."""
    return dict(zip(METHODS, PUBLISHED_NLL[dataset], strict=True))
