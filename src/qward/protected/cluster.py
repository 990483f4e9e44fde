"""Settings of a core that is one of several appending to one PostgreSQL transparency log.

- ``QWARD_LOG_DATABASE`` (a ``postgresql://`` URL) is the shared log. On PostgreSQL a core always
  runs under the publisher lease (``qward.tlog.pg_coordination``), alone or not: appending is open
  to every core, publishing checkpoints only to the lease holder.
- ``QWARD_LOG_IDENTITY`` names the log identity file every core of the log is given
  (``qward cluster log-identity``): one origin and checkpoint key for the whole log.
- ``QWARD_CORE_ID`` names the core in the lease (the pod name in Kubernetes; default the host
  name). A random suffix per start keeps a restarted core from taking over the lease of the
  process it replaces before that lease runs out.
- ``QWARD_LOG_LEASE_SECONDS``: how long a lease lasts unrenewed (default 3): after a publisher
  dies, another core publishes within about this long.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

from qward.errors import InputError
from qward.protected.log_identity import LOG_IDENTITY_ENV, LogIdentity
from qward.tlog.backend import LogBackend
from qward.tlog.location import is_postgres
from qward.tlog.shared_sequencer import Coordination

__all__ = [
    "CORE_ID_ENV",
    "LEASE_SECONDS_ENV",
    "core_name",
    "publisher_lease",
    "shared_log_identity",
]

CORE_ID_ENV = "QWARD_CORE_ID"
LEASE_SECONDS_ENV = "QWARD_LOG_LEASE_SECONDS"
_DEFAULT_LEASE_SECONDS = 3.0


def shared_log_identity(location: str) -> LogIdentity | None:
    """The log identity ``QWARD_LOG_IDENTITY`` names, if set; it needs a PostgreSQL log."""
    path = os.environ.get(LOG_IDENTITY_ENV)
    if not path:
        return None
    if not is_postgres(location):
        raise InputError(
            f"{LOG_IDENTITY_ENV} is for cores sharing a PostgreSQL log: set QWARD_LOG_DATABASE to "
            "its postgresql:// URL"
        )
    return LogIdentity.load(Path(path))


def core_name() -> str:
    """This core's name in the publisher lease: ``QWARD_CORE_ID`` (or the host), then a nonce."""
    base = os.environ.get(CORE_ID_ENV) or socket.gethostname() or "core"
    if len(base) > 128 or not base.isprintable():
        raise InputError(f"{CORE_ID_ENV} must be printable and at most 128 characters")
    return f"{base}/{secrets.token_hex(4)}"


def _lease_seconds() -> float:
    text = os.environ.get(LEASE_SECONDS_ENV)
    if not text:
        return _DEFAULT_LEASE_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0.3 <= seconds <= 600:
        raise InputError(f"{LEASE_SECONDS_ENV}={text!r}: a number of seconds from 0.3 to 600")
    return seconds


def publisher_lease(location: str) -> Callable[[LogBackend], Coordination] | None:
    """For a PostgreSQL log, how to run each (re)opened store under the publisher lease."""
    if not is_postgres(location):
        return None
    from qward.tlog.pg_coordination import PostgresCoordination
    from qward.tlog.pg_store import PostgresLogStore

    name, ttl = core_name(), _lease_seconds()

    def coordinate(store: LogBackend) -> Coordination:
        if not isinstance(store, PostgresLogStore):
            raise InputError("the publisher lease needs the PostgreSQL log store")
        return PostgresCoordination(store, holder=name, ttl=ttl)

    return coordinate
