"""The ``qward`` command. It is public code: it never imports ``qward.protected``.

Every command resolves its errors in one place, ``main``: a ``QwardError`` or a usage error becomes
one unwrapped line on stderr and an exit code, never a traceback:

    0 success, 1 verification failed, 2 bad input (including usage), 3 core or runtime failure.
"""

from __future__ import annotations

import os
import sys

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from qward.cli import (
    attest,
    attested,
    audit,
    chat,
    cluster,
    doctor,
    erasure,
    keys,
    replays,
    serving,
    witness,
)
from qward.cli._app import app, fail
from qward.errors import (
    AuditError,
    CoreUnavailableError,
    CryptoError,
    InputError,
    KeystoreError,
    QwardError,
    RuntimeFailure,
    VerificationError,
)

__all__ = ["EXIT_CODES", "app", "exit_code", "main"]

# The command modules register themselves on ``app`` when imported.
_COMMANDS = (
    attest,
    attested,
    audit,
    chat,
    cluster,
    doctor,
    erasure,
    keys,
    replays,
    serving,
    witness,
)

#: Error family -> exit code, most specific first (README, "Exit codes").
EXIT_CODES: list[tuple[type[QwardError], int]] = [
    (VerificationError, 1),
    # A key nobody trusts, or a sealed artifact that does not authenticate: evidence that fails.
    (CryptoError, 1),
    # FormatError is an InputError: a file that is not what it claims is bad input, not a failed
    # verification.
    (InputError, 2),
    (AuditError, 3),
    (KeystoreError, 3),
    (CoreUnavailableError, 3),
    (RuntimeFailure, 3),
]


def exit_code(exc: QwardError) -> int:
    """The documented exit code for ``exc``."""
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), 3)


def main() -> None:
    """Console entry point: run the app and map every error to one line and an exit code."""
    try:
        result = app(standalone_mode=False)
    except QwardError as exc:
        fail(exc.code, str(exc), exit_code(exc))
    except NoArgsIsHelpError as exc:
        # ``qward`` or ``qward keys`` alone: the help is what the user needs, then a usage error.
        sys.stdout.write(exc.format_message().rstrip() + "\n")
        fail("usage", f"'{exc.ctx.command_path}' needs a command; see the list above", 2)
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "qward"
        fail("usage", f"{exc.format_message().rstrip('.')}; see '{where} --help'", 2)
    except typer.TyperException as exc:  # click's other errors (a file it could not open, ...)
        fail("invalid_input", exc.format_message(), 2)
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted", "interrupted", 130)
    except OSError as exc:  # a path the user gave that no command checked more precisely
        where = f"{exc.filename}: " if exc.filename else ""
        fail("invalid_input", f"{where}{exc.strerror or exc}", 2)
    except Exception as exc:
        # A bug, not the user's doing: still one line; QWARD_DEBUG=1 shows the traceback.
        if os.environ.get("QWARD_DEBUG") == "1":
            raise
        fail("internal_error", f"{type(exc).__name__} in qward (set QWARD_DEBUG=1 for details)", 3)
    sys.exit(result if isinstance(result, int) else 0)
