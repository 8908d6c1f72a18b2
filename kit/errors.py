"""The toolkit's own errors. The CLI prints them as one line and exits non-zero; anything else is a bug."""


class KitError(Exception):
    """Base class: a problem with the user's input or environment, with a message that names the culprit."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str) and _is_worker_report(args[0]):
            args = (_from_worker(args[0]),)
        super().__init__(*args)


def _is_worker_report(message: str) -> bool:
    return message.startswith("Caught ") and "\nOriginal Traceback" in message


def _from_worker(report: str) -> str:
    """A DataLoader worker's error comes back as its whole traceback (torch's ExceptionWrapper.reraise builds the
    exception again from "Caught X in DataLoader worker process N.\nOriginal Traceback ..."); keep the one line that
    names the culprit, and say which worker raised it."""
    where = report.splitlines()[0].removeprefix("Caught ").rstrip(".").split(" ", 1)[-1]
    last = [line for line in report.splitlines() if line.strip()][-1]
    return f"{last.partition(': ')[2] or last} ({where})"


class DataError(KitError):
    """Bad or missing data: a labels file, an image, an HDF5 key, a folds file."""


class ConfigError(KitError):
    """An unknown competition, model, config key or option value."""


class SubmissionError(KitError):
    """A submission that does not match the competition's format: columns, ids, or values."""


class WriteError(KitError):
    """The disk refused a write: full, read-only, no permission, or a file where a folder must be."""


class KaggleError(KitError):
    """A Kaggle API call failed: missing or rejected credentials, rules not accepted, a limit, a failed upload."""
