"""Errors a user can act on: printed as one clear message, never as a traceback."""


class MdnlabError(Exception):
    """Base class: the message names the file, field, row or value at fault and what was expected."""


class DataError(MdnlabError):
    """The data (a file, a column, a row) is not what the run needs."""


class ConfigError(MdnlabError):
    """A configuration value is out of range or does not fit the rest of the config."""


class TrainingError(MdnlabError):
    """Training could not produce a usable fit (for example the loss became non-finite)."""


class LoadError(MdnlabError):
    """A reference (run id, URI, path) that does not lead to a fitted mdnlab model."""


class FittedModelError(MdnlabError):
    """A request a fitted model cannot answer: a quantity its family does not define, or an
    argument out of range."""
