"""The one exception type of the project.

Bad input, a broken contract or an unusable artifact is raised as ``AffectError`` with a message that names the file,
row or attribute and what was expected; the CLI reports it as one line and exits non-zero.
"""

from __future__ import annotations


class AffectError(Exception):
    """A user-facing error: the message alone must tell what is wrong and where."""


def fail(where: str, problem: str) -> AffectError:
    """Build an ``AffectError`` reading ``"<where>: <problem>"`` (raise the result)."""
    return AffectError(f"{where}: {problem}")
