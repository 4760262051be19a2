"""mdnlab: Mixture Density Networks as misspecified maximum-likelihood models."""


def load(ref, tracking_uri: str | None = None):
    """A fitted model (``mdnlab.fitted.FittedModel``) from an MLflow run id, a ``runs:/<id>``
    URI, a checkpoint file or a run's artifact directory; see ``mdnlab.fitted.load``."""
    from mdnlab.fitted import load as _load  # lazy: `import mdnlab` stays light

    return _load(ref, tracking_uri)


__all__ = ["load"]
