"""What the report could not use: one :class:`Skipped` entry per problem met while reading.

Collected while run folders and their images are read, listed in the page's "Skipped"
section, printed once on stderr by ``droplab report`` and returned in its ``--json``
summary.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Skipped:
    """One problem: the ``path``, a short ``kind`` and the ``reason``.

    ``reason`` reads after the path, so ``f"{path} {reason}"`` (:attr:`message`) is the
    one-line message, e.g. ``runs/a/summary.json cannot be read as JSON (…)``.
    """

    path: str
    kind: str
    reason: str

    @property
    def message(self) -> str:
        return f"{self.path} {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "reason": self.reason}
