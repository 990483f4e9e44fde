"""``python -m qward.witness init|serve``: a witness as its own process, with its own keys."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import NoReturn

import uvicorn

from qward.errors import QwardError
from qward.tlog.note import NoteVerifier
from qward.tlog.witness import Witness
from qward.witness.app import create_witness_app
from qward.witness.keys import create_witness_keys, load_witness_keys

__all__ = ["main"]

_DEFAULT_DIR = Path(".qward-witness")


def _logs(vkeys: list[str]) -> dict[str, list[NoteVerifier]]:
    # A log's checkpoint key name is its origin (c2sp.org/tlog-checkpoint).
    logs: dict[str, list[NoteVerifier]] = defaultdict(list)
    for vkey in vkeys:
        verifier = NoteVerifier.from_vkey(vkey)
        logs[verifier.name].append(verifier)
    return dict(logs)


class _Parser(argparse.ArgumentParser):
    """Argument errors are one line on stderr and exit 2, like every qward command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error (usage): {message}; see '{self.prog} --help'\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qward witness")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    init = commands.add_parser("init", help="create the witness's keys and print them")
    init.add_argument("--state-dir", type=Path, default=_DEFAULT_DIR)
    init.add_argument("--name", required=True, help="witness name, e.g. witness.example/w1")
    keys = commands.add_parser("keys", help="print the witness's verifier keys")
    keys.add_argument("--state-dir", type=Path, default=_DEFAULT_DIR)
    serve = commands.add_parser("serve", help="serve add-checkpoint")
    serve.add_argument("--state-dir", type=Path, default=_DEFAULT_DIR)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100)
    serve.add_argument("--log", action="append", default=[], help="a log's verifier key")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the witness process."""
    args = _parser().parse_args(argv)
    try:
        if args.command in ("init", "keys"):
            signers = (
                create_witness_keys(args.state_dir, name=args.name)
                if args.command == "init"
                else load_witness_keys(args.state_dir)
            )
            for signer in signers:
                print(signer.verifier().to_vkey())
            return 0
        if not args.log:
            raise QwardError("give at least one --log verifier key to witness")
        witness = Witness.open(
            args.state_dir / "witness.sqlite",
            logs=_logs(args.log),
            signers=load_witness_keys(args.state_dir),
        )
    except QwardError as exc:
        print(f"error ({exc.code}): {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error (invalid_input): {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"qward witness listening on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        uvicorn.run(
            create_witness_app(witness), host=args.host, port=args.port, log_level="warning"
        )
    finally:
        witness.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
