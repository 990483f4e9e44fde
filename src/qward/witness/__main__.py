"""``python -m qward.witness init|serve``: a witness as its own process, with its own keys."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import uvicorn

from qward.errors import QwardError
from qward.tlog.note import NoteVerifier
from qward.tlog.witness import Witness
from qward.witness.app import create_witness_app
from qward.witness.keys import create_witness_keys, load_witness_keys

__all__ = ["main"]


def _logs(vkeys: list[str]) -> dict[str, list[NoteVerifier]]:
    # A log's checkpoint key name is its origin (c2sp.org/tlog-checkpoint).
    logs: dict[str, list[NoteVerifier]] = defaultdict(list)
    for vkey in vkeys:
        verifier = NoteVerifier.from_vkey(vkey)
        logs[verifier.name].append(verifier)
    return dict(logs)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the witness process."""
    parser = argparse.ArgumentParser(prog="qward witness")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create the witness's keys and print them")
    init.add_argument("--state-dir", type=Path, required=True)
    init.add_argument("--name", required=True, help="witness name, e.g. witness.example/w1")
    serve = commands.add_parser("serve", help="serve add-checkpoint")
    serve.add_argument("--state-dir", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100)
    serve.add_argument("--log", action="append", default=[], help="a log's verifier key")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            for signer in create_witness_keys(args.state_dir, name=args.name):
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
        print(f"qward witness: {exc}", file=sys.stderr)
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
