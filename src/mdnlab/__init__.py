"""mdnlab: Mixture Density Networks as misspecified maximum-likelihood models."""


def load(ref, tracking_uri: str | None = None):
    """A fitted model (``mdnlab.fitted.FittedModel``) from an MLflow run id, a ``runs:/<id>``
    URI, a checkpoint file or a run's artifact directory; see ``mdnlab.fitted.load``."""
    from mdnlab.fitted import load as _load  # lazy: `import mdnlab` stays light

    return _load(ref, tracking_uri)


def __getattr__(name: str):
    if name == "MDN":  # lazy, as load: `import mdnlab` stays light
        from mdnlab.api import MDN

        return MDN
    raise AttributeError(f"module 'mdnlab' has no attribute {name!r}")


__all__ = ["MDN", "load"]
