"""What ``qward serve`` does: prepare the state directory, start and supervise two processes.

The launcher starts the protected core (``python -m qward.protected``) and, once its socket
answers, the public server (``python -m qward.public``). It then only supervises: a child that
dies is reaped and restarted with exponential backoff (0.5 s doubling to 30 s); SIGTERM or SIGINT
stops the public server, then the core. Started as root, each child runs as its own system user
(``qward-core``, ``qward-api``; the core starts workers as ``qward-worker``); the keystore
passphrase and PKCS#11 PIN reach the core through a pipe and nobody's environment.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from qward.cli._app import example
from qward.errors import CoreUnavailableError
from qward.privileges import (
    PrivilegeError,
    ServiceUser,
    ensure_user,
    first_unreadable,
    runtime_paths,
)
from qward.sdk.client import Client
from qward.sdk.core_client import CoreClient
from qward.sdk.core_process import reachable
from qward.sdk.example_llm import EXAMPLE_LLM_NAME, example_llm_model, example_llm_template

__all__ = ["EXAMPLE_MODEL", "Launcher", "ServeOptions", "public_environment"]

_SECRET_ENV = ("QWARD_KEYSTORE_PASSPHRASE", "QWARD_PKCS11_PIN")
_PLAIN_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHASHSEED")
# Prefixes the public server may see; secrets and the log database URL (it may hold a password)
# are excluded by name below.
_PUBLIC_PREFIXES = ("OTEL_", "QWARD_")
_PUBLIC_DENY = ("QWARD_KEYSTORE_", "QWARD_PKCS11_", "QWARD_LOG_DATABASE", "QWARD_TOKEN")
#: The model ``qward serve`` serves when given no model repository.
EXAMPLE_MODEL = "iris-mlp"
EXAMPLE_MODEL_FILE = "iris-mlp.onnx"
_MIN_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_STABLE_AFTER = 30.0


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """Everything ``qward serve`` was asked to do."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    model_repository: Path | None = None
    allow_model_upload: bool = False
    unsafe_no_auth: bool = False
    core_user: str = "qward-core"
    api_user: str = "qward-api"
    worker_user: str = "qward-worker"
    admin_uids: tuple[int, ...] = ()
    passphrase_file: Path | None = None
    pin_file: Path | None = None
    unsafe_single_user: bool = False
    example_model: bool = True
    #: Also serve the example language model (Gemma 3 270M, the ``llm`` extra).
    example_llm: bool = False
    allow_degraded_isolation: bool = False
    max_output_bytes: int | None = None
    public_flags: tuple[str, ...] = ()
    #: Extra arguments for the core: attestation (TPM, measured files, policy).
    core_flags: tuple[str, ...] = ()


def public_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The public server's environment: an allow-list, never a key, PIN or database URL."""
    env = {k: v for k, v in environ.items() if k in _PLAIN_ENV}
    for key, value in environ.items():
        if key.startswith(_PUBLIC_PREFIXES) and not key.startswith(_PUBLIC_DENY):
            env[key] = value
    return env


def _core_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    # The core needs its configuration (PKCS#11 module, log database) but gets secrets by pipe.
    env = {k: v for k, v in environ.items() if k in _PLAIN_ENV}
    for key, value in environ.items():
        if key.startswith(_PUBLIC_PREFIXES) and key not in _SECRET_ENV:
            env[key] = value
    return env


@dataclass
class _Child:
    """One supervised process and its restart schedule."""

    name: str
    spawn: Callable[[], subprocess.Popen[bytes]]
    proc: subprocess.Popen[bytes] | None = None
    backoff: float = _MIN_BACKOFF
    started: float = 0.0
    restart_at: float | None = None
    restarts: int = field(default=0)

    def start(self) -> None:
        self.proc = self.spawn()
        self.started = time.monotonic()
        self.restart_at = None

    def check(self, now: float) -> None:
        """Reap a dead child and schedule its restart; restart it when its time has come."""
        if self.proc is not None and self.restart_at is None:
            code = self.proc.poll()
            if code is None:
                if now - self.started > _STABLE_AFTER:
                    self.backoff = _MIN_BACKOFF
                return
            if now - self.started > _STABLE_AFTER:
                self.backoff = _MIN_BACKOFF
            print(
                f"qward serve: {self.name} (pid {self.proc.pid}) exited with {code}; "
                f"restarting in {self.backoff:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            self.restart_at = now + self.backoff
            self.backoff = min(self.backoff * 2, _MAX_BACKOFF)
        if self.restart_at is not None and now >= self.restart_at:
            self.restarts += 1
            try:
                self.start()
            except OSError as exc:
                print(f"qward serve: cannot start {self.name}: {exc}", file=sys.stderr)
                self.restart_at = now + self.backoff

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Launcher:
    """The small supervisor ``qward serve`` runs as: see the module docstring."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        # Root separates the processes unless the operator explicitly gives that up.
        self.privileged = os.geteuid() == 0 and not options.unsafe_single_user
        self._users: dict[str, ServiceUser] = {}
        self._secrets = {k: os.environ[k] for k in _SECRET_ENV if os.environ.get(k)}
        self._stopping = False
        self.core = _Child("protected core", self._spawn_core)
        self.public = _Child("public server", self._spawn_public)

    @property
    def socket(self) -> Path:
        """The core's socket: under ``run/`` when privileged, the classic path otherwise."""
        state = self.options.state_dir
        return state / "run" / "core.sock" if self.privileged else state / "core.sock"

    def prepare(self) -> None:
        """Check users and permissions and lay out the state directory (root only)."""
        state = self.options.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.privileged:
            return
        self._users = _service_users(self.options)
        _check_readable(self._users.values())
        core, api = self._users["core"], self._users["api"]
        _own_state(state, core, api)

    def _spawn_core(self) -> subprocess.Popen[bytes]:
        opts = self.options
        argv = [sys.executable, "-m", "qward.protected", "--state-dir", str(opts.state_dir)]
        argv += ["--exit-with-parent"]
        if opts.allow_degraded_isolation:
            argv += ["--allow-degraded-isolation"]
        if opts.max_output_bytes is not None:
            argv += ["--max-output-bytes", str(opts.max_output_bytes)]
        argv += list(opts.core_flags)
        if self.privileged:
            core, api, worker = (self._users[k] for k in ("core", "api", "worker"))
            argv += [
                "--user",
                f"{core.uid}:{core.gid}",
                "--worker-user",
                f"{worker.uid}:{worker.gid}",
            ]
            argv += ["--socket", str(self.socket), "--api-uid", str(api.uid)]
            for uid in (0, *opts.admin_uids):
                argv += ["--admin-uid", str(uid)]
        elif opts.admin_uids:
            for uid in (os.getuid(), *opts.admin_uids):
                argv += ["--admin-uid", str(uid)]
        if opts.passphrase_file is not None:
            argv += ["--keystore-passphrase-file", str(opts.passphrase_file)]
        env = _core_environment(os.environ)
        if opts.pin_file is not None:
            env["QWARD_PKCS11_PIN_FILE"] = str(opts.pin_file)
        fds: list[int] = []
        for variable, flag in zip(
            _SECRET_ENV, ("--keystore-passphrase-fd", "--pkcs11-pin-fd"), strict=True
        ):
            if variable in self._secrets:
                fd = _secret_pipe(self._secrets[variable])
                fds.append(fd)
                argv += [flag, str(fd)]
        self.socket.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        log = os.fdopen(os.open(opts.state_dir / "core.log", flags, 0o600), "ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd="/",
                pass_fds=fds,
                process_group=0,
            )
        finally:
            log.close()
            for fd in fds:
                os.close(fd)
        return proc

    def _spawn_public(self) -> subprocess.Popen[bytes]:
        opts = self.options
        argv = [sys.executable, "-m", "qward.public", "--state-dir", str(opts.state_dir)]
        argv += ["--host", opts.host, "--port", str(opts.port), "--exit-with-parent"]
        if opts.model_repository is not None:
            argv += ["--model-repository", str(opts.model_repository)]
        if opts.allow_model_upload:
            argv += ["--allow-model-upload"]
        if opts.unsafe_no_auth:
            argv += ["--unsafe-no-auth"]
        argv += list(opts.public_flags)
        if self.privileged:
            api = self._users["api"]
            argv += ["--user", f"{api.uid}:{api.gid}"]
            tokens = opts.state_dir / "tokens.json"
            if tokens.exists():
                # The public server reads token digests once at start; root keeps writing them.
                os.chown(tokens, 0, api.gid)
                os.chmod(tokens, 0o640)
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            env=public_environment(os.environ),
            cwd="/",
            process_group=0,
        )

    def wait_core(self, timeout: float = 60.0) -> None:
        """Wait until the core's socket answers; raise if the core exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.core.proc is not None
            if self.core.proc.poll() is not None:
                tail = (self.options.state_dir / "core.log").read_text(errors="replace")
                raise CoreUnavailableError(
                    "the protected core exited during start-up: "
                    + " | ".join(tail.splitlines()[-3:])
                )
            if reachable(self.socket):
                return
            time.sleep(0.05)
        raise CoreUnavailableError(f"the protected core did not start within {timeout:.0f} s")

    def run(self) -> int:
        """Prepare, start both processes, supervise until SIGTERM/SIGINT, then stop both."""
        self.prepare()

        def _stop(signum: int, frame: FrameType | None) -> None:
            self._stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            self.core.start()
            self.wait_core()
            if self.options.example_model and self.options.model_repository is None:
                _register_example(self.socket)
            if self.options.example_llm:
                _register_example_llm(self.socket)
            self.public.start()
            while not self._stopping:
                now = time.monotonic()
                self.core.check(now)
                self.public.check(now)
                time.sleep(0.1)
        finally:
            self.public.stop()
            self.core.stop()
        return 0


def _register_example(socket_path: Path) -> None:
    """With no model repository, serve the bundled iris model: the main job's embedded default,
    so the README's curl and tritonclient calls work right after ``qward serve``."""
    model = example(EXAMPLE_MODEL_FILE)
    digest = hashlib.sha256(model).hexdigest()
    with CoreClient(socket_path) as core:
        known = core.models()
        if any(m["name"] == EXAMPLE_MODEL or m["model_sha256"] == digest for m in known):
            return
        Client(core, trust=core.trust()).register(model, name=EXAMPLE_MODEL)
    print(f"qward serve: serving the bundled example model as {EXAMPLE_MODEL!r}", file=sys.stderr)


def _register_example_llm(socket_path: Path) -> None:
    """Serve the example language model (sealed and registered like any model)."""
    with CoreClient(socket_path) as core:
        if any(m["name"] == EXAMPLE_LLM_NAME for m in core.models()):
            return
        model = example_llm_model()
        Client(core, trust=core.trust()).register(
            model, name=EXAMPLE_LLM_NAME, chat_template=example_llm_template()
        )
    print(
        f"qward serve: serving the example language model as {EXAMPLE_LLM_NAME!r}", file=sys.stderr
    )


def _secret_pipe(secret: str) -> int:
    """A pipe's read end holding ``secret``: the child reads it once, no environment sees it."""
    read, write = os.pipe()
    os.write(write, secret.encode("utf-8"))
    os.close(write)
    return read


def _service_users(options: ServeOptions) -> dict[str, ServiceUser]:
    defaults = ServeOptions(state_dir=options.state_dir)
    users = {
        "core": ensure_user(options.core_user, create=options.core_user == defaults.core_user),
        "api": ensure_user(options.api_user, create=options.api_user == defaults.api_user),
        "worker": ensure_user(
            options.worker_user, create=options.worker_user == defaults.worker_user
        ),
    }
    if len({u.uid for u in users.values()}) != 3:
        raise PrivilegeError("the core, api and worker users must have three different uids")
    return users


def _check_readable(users: Iterable[ServiceUser]) -> None:
    """Refuse, naming the first blocking directory, if a service user cannot run Python here."""
    for user in users:
        for path in runtime_paths():
            blocked = first_unreadable(path, uid=user.uid, gids={user.gid})
            if blocked is not None:
                raise PrivilegeError(
                    f"user {user.name} cannot read {blocked} (needed for {path}): install "
                    "qward where the service users can read it, or run `qward serve "
                    "--unsafe-single-user` (no privilege separation)"
                )


def _own_state(state: Path, core: ServiceUser, api: ServiceUser) -> None:
    """State dir 0710 qward-core:qward-api; everything in it the core's; ``run/`` 2750 with the
    api's group, so the socket the core creates there is group qward-api."""
    os.chown(state, core.uid, api.gid)
    os.chmod(state, 0o710)  # noqa: S103 - search only, for the api's group; no listing
    run = state / "run"
    for path in sorted(state.rglob("*")):
        if path == run or run in path.parents or path.name == "tokens.json":
            continue
        os.lchown(path, core.uid, core.gid)
    run.mkdir(exist_ok=True)
    os.chown(run, core.uid, api.gid)
    os.chmod(run, 0o2750)  # noqa: S103 - the api's group reaches the socket; others nothing
    link = state / "core.sock"
    if link.is_symlink() or link.exists():
        link.unlink()
    # Clients that know only the classic path (`qward run` as root, the public app) follow this.
    link.symlink_to(Path("run") / "core.sock")
