"""One exception type per meaning; pure code raises built-ins, boundaries wrap them in these."""

from __future__ import annotations


class AupguardError(Exception):
    """Base of every error aupguard reports to an admin."""


class ConfigError(AupguardError):
    """The configuration is invalid; `errors` holds every problem, sorted by file and line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


class ListRejected(AupguardError):  # noqa: N818  (names the outcome an admin sees)
    """A category list failed to parse or exceeded its error budget; the last good index stays."""
