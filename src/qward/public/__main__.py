"""``python -m qward.public``: the public HTTP server's own entry point.

Started by a root ``qward serve`` with ``--user UID:GID``, it drops to that user (no capabilities
at all) before it builds the app, so nothing it does touches the keystore as root.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qward.errors import QwardError
from qward.heap import settle_heap
from qward.privileges import ServiceUser, drop_to, exit_with_parent, parse_uid_gid

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Drop privileges if asked, then serve the public API with uvicorn."""
    parser = argparse.ArgumentParser(prog="python -m qward.public")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-repository", type=Path)
    parser.add_argument("--allow-model-upload", action="store_true")
    parser.add_argument("--unsafe-no-auth", action="store_true")
    parser.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json")
    parser.add_argument("--metrics-without-token", action="store_true")
    parser.add_argument("--log-requires-token", action="store_true")
    parser.add_argument("--no-access-log", action="store_true", help="no line per request")
    parser.add_argument("--user", type=parse_uid_gid, help="UID:GID to drop to (started as root)")
    parser.add_argument("--exit-with-parent", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.user is not None:
            uid, gid = args.user
            drop_to(ServiceUser(name="qward-api", uid=uid, gid=gid))
        if args.exit_with_parent:
            exit_with_parent()
        import uvicorn

        from qward.public.app import create_app

        api = create_app(
            args.state_dir,
            model_repository=args.model_repository,
            allow_model_upload=args.allow_model_upload,
            unsafe_no_auth=args.unsafe_no_auth,
            docs=args.docs,
            metrics_requires_token=not args.metrics_without_token,
            log_requires_token=args.log_requires_token,
        )
    except QwardError as exc:
        print(f"qward public: {exc}", file=sys.stderr)
        return 2
    settle_heap()
    uvicorn.run(
        api,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=not args.no_access_log,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
