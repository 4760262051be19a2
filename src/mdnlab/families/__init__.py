"""Output families, looked up by the name ``model.family`` gives."""

from mdnlab.errors import ConfigError
from mdnlab.families.base import Family
from mdnlab.families.categorical import CategoricalFamily
from mdnlab.families.gaussian import GaussianFamily
from mdnlab.families.wishart import WishartFamily

FAMILIES: dict[str, type[Family]] = {
    GaussianFamily.name: GaussianFamily,
    CategoricalFamily.name: CategoricalFamily,
    WishartFamily.name: WishartFamily,
}


def family_class(name: str) -> type[Family]:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"model.family={name!r} is not a known family; known: {', '.join(sorted(FAMILIES))}"
        ) from None


def build_family(name: str, n_components: int, event_shape, **options) -> Family:
    if n_components < 1:
        raise ConfigError(f"model.n_components must be at least 1, got {n_components}")
    return family_class(name)(n_components, tuple(event_shape), **options)
