"""The user's handle on a fitted run (statsmodels' Results, for MDNs).

``mdnlab.load(ref)`` returns a ``FittedModel``: the network, its family, the scalers and the
data schema, with the predictive distribution over y in original units (``distribution``,
``log_prob``, ``sample``, moments, weights, components; for scalar y ``cdf``, ``quantile``,
``modes``; for categorical ``class_probabilities``) and ``predict`` for a long table.
"""

from mdnlab.fitted.distributions import FittedModelError
from mdnlab.fitted.loading import load
from mdnlab.fitted.model import FittedModel
from mdnlab.fitted.schema import LoadError, Schema

__all__ = ["FittedModel", "FittedModelError", "LoadError", "Schema", "load"]
