"""User-facing errors: one line naming the bad value and the fix, never a deep traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UserInputError(ValueError):
    """Bad input from the user (path, file, option). `str(err)` is a single line with the fix."""


def user_input_error_types() -> tuple[type[BaseException], ...]:
    """Every error class whose message is written for the user (kept in one place)."""
    from styleme3d_ns.data.style_image import StyleImageError
    from styleme3d_ns.guidance.weights import MissingWeightsError

    return (UserInputError, StyleImageError, MissingWeightsError)


@contextlib.contextmanager
def exit_on_user_error(prog: str = "styleme3d") -> Iterator[None]:
    """Turn user-input errors into `SystemExit("<prog>: <one line>")` at a CLI boundary.

    nerfstudio's `ns-train` runs our model inside its own entry point, so this is the only
    place we can stop Python printing a traceback for a mistake the user can fix.
    """
    try:
        yield
    except user_input_error_types() as err:
        raise SystemExit(f"{prog}: error: {err}") from None
