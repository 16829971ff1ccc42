"""User-facing errors.

Every problem a user can fix (a bad option, a missing file, a dataset that is not on disk)
raises a :class:`UserError` subclass whose message is one line naming the problem and the
fix. The CLI prints it and exits with status 2. Bugs stay ordinary exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """A problem the user can fix; the message is one line and says how."""


class InvalidValue(UserError, ValueError):
    """An option or argument outside its valid range (e.g. a rate outside [0, 1))."""


class UnknownName(UserError, ValueError):
    """An unknown dataset, model, dropout kind, … name."""


class DataNotFound(UserError, FileNotFoundError):
    """A dataset, image or run folder that is not where it was looked for."""


class ImageReadError(UserError):
    """A file that cannot be decoded as an image."""


class WeightsUnavailable(UserError):
    """Pretrained weights that are neither cached nor downloadable."""


class ResumeError(UserError):
    """A run folder that cannot be resumed with the given configuration."""


def check_rate(p: float, name: str = "p") -> float:
    """Validate a drop probability and return it as ``float``.

    Raises :class:`InvalidValue` unless ``0 <= p < 1``.
    """
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise InvalidValue(f"{name} must be a number in [0, 1), got {p!r}") from None
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise InvalidValue(
            f"{name}={value:g} is outside [0, 1): dropout rates are drop probabilities; "
            "use e.g. 0.1–0.5"
        )
    return value


def unknown_name(what: str, name: str, valid: Iterable[str]) -> UnknownName:
    """Build the error for an unknown ``what`` (e.g. ``"model"``) listing the valid names."""
    choices = ", ".join(sorted(valid))
    return UnknownName(f"unknown {what} {name!r}; choose one of: {choices}")
