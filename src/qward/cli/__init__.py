"""The ``qward`` command. It is public code: it never imports ``qward.protected``.

Every command resolves its errors in one place, ``main``: a ``QwardError`` becomes one line on
stderr and an exit code (1 verification failed, 2 bad input, 3 core or runtime failure), never a
traceback.
"""

from __future__ import annotations

import sys

import typer

from qward.cli import attested, audit, keys, serving, witness
from qward.cli._app import app, err_console
from qward.errors import (
    CoreUnavailableError,
    FormatError,
    InputError,
    QwardError,
    RuntimeFailure,
    VerificationError,
)

__all__ = ["app", "main"]

# The command modules register themselves on ``app`` when imported.
_COMMANDS = (attested, audit, keys, serving, witness)


_EXIT_CODES: list[tuple[type[QwardError], int]] = [
    (VerificationError, 1),
    (FormatError, 1),
    (InputError, 2),
    (CoreUnavailableError, 3),
    (RuntimeFailure, 3),
]


def main() -> None:
    """Console entry point: run the app and map errors to exit codes."""
    try:
        app(standalone_mode=False)
    except QwardError as exc:
        code = next((c for cls, c in _EXIT_CODES if isinstance(exc, cls)), 3)
        err_console.print(f"[red]error[/red] ({exc.code}): {exc}")
        sys.exit(code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
