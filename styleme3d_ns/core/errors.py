"""User-facing errors: one line naming the bad value and the fix, never a deep traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UserInputError(ValueError):
    """Bad input from the user (path, file, option). `str(err)` is a single line with the fix.

    Every error written for the user subclasses it (style images, missing weights, face models, checkpoints), so
    a command's boundary catches this one type.
    """


class MissingWeightsError(UserInputError):
    """Model weights are not on this machine; the message is one line saying where we looked and how to fix it."""


@contextlib.contextmanager
def exit_on_user_error(prog: str = "styleme3d") -> Iterator[None]:
    """Turn user-input errors into `SystemExit("<prog>: <one line>")` at a CLI boundary.

    nerfstudio's `ns-train` runs our model inside its own entry point, so this is the only
    place we can stop Python printing a traceback for a mistake the user can fix.
    """
    try:
        yield
    except UserInputError as err:
        raise SystemExit(f"{prog}: error: {err}") from None
