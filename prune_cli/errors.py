"""The error types every part of prune-cli raises, on the ground floor: this module imports
nothing of the package, so that pruning, the store and the data layer can raise them without
importing the configuration (and the configuration without importing torch).

Each message is one line that names the offending key or file; the CLI prints it and exits 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line and names the key."""


class DataError(Exception):
    """A dataset cannot be found, fetched or read; the message is one line naming what failed."""


class CorruptFileError(RuntimeError):
    """A checkpoint, state or cache file that exists but cannot be read (one-line message)."""


class MissingSnapshotError(ConfigError):
    """A complete dense cache entry lacks the snapshot that weight rewinding needs."""


def one_line(e: BaseException) -> str:
    """``e`` as a single line for error messages (``Type: message``, or the type alone)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type name when the message is empty)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def import_object(path: str):
    """The object at the dotted ``path`` (Hydra's ``get_object``, without the error it logs: the
    caller turns the ImportError into its one line)."""
    import logging

    from hydra.utils import get_object

    logger = logging.getLogger("hydra.utils")
    disabled, logger.disabled = logger.disabled, True
    try:
        return get_object(path)
    except Exception as e:  # noqa: BLE001 - report the root cause (e.g. No module named 'x')
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ImportError(first_line(cause)) from e
    finally:
        logger.disabled = disabled
