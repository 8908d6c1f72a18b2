"""The toolkit's own errors. The CLI prints them as one line and exits non-zero; anything else is a bug."""


class KitError(Exception):
    """Base class: a problem with the user's input or environment, with a message that names the culprit."""


class DataError(KitError):
    """Bad or missing data: a labels file, an image, an HDF5 key, a folds file."""


class ConfigError(KitError):
    """An unknown competition, model, config key or option value."""


class SubmissionError(KitError):
    """A submission that does not match the competition's format: columns, ids, or values."""


class KaggleError(KitError):
    """A Kaggle API call failed: missing or rejected credentials, rules not accepted, a limit, a failed upload."""
