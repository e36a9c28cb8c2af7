"""``fedunlearn node-executor``: the warm executor beside a ``flower-supernode
--isolation process`` (see :mod:`fedunlearn.runtime.executor`).

``fedunlearn node-executor --runtime-api-address 127.0.0.1:9094 [--insecure |
--root-certificates CA.pem] [--poll-interval 0.05]`` runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import threading

from fedunlearn.commands.args import OneLineParser, UsageError
from fedunlearn.errors import UserError, report

__all__ = ["PROG", "executor_command"]

PROG = "fedunlearn node-executor"


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG, allow_abbrev=False,
        description="Serve a SuperNode's tasks (started with --isolation process) from a "
        "pre-warmed parent: one forked process per message, torch imported once.")
    parser.add_argument("--runtime-api-address", required=True,
                        help="HOST:PORT of the SuperNode's Runtime API (its --host/--port)")
    parser.add_argument("--insecure", action="store_true",
                        help="plain HTTP to the Runtime API (its default, on loopback)")
    parser.add_argument("--root-certificates", default=None,
                        help="CA file of the Runtime API's certificate, when it serves TLS")
    parser.add_argument("--poll-interval", type=float, default=0.05,
                        help="seconds between two task polls that found nothing "
                             "(runtime.task_poll_interval; default 0.05)")
    return parser


def executor_command(argv: list[str]) -> int:
    """Run ``fedunlearn node-executor``; 0 after SIGTERM/SIGINT, 2 after one line."""
    from fedunlearn.runtime.executor import install_signal_handlers, serve_tasks

    try:
        args = _parser().parse_args(argv)
        if args.insecure == bool(args.root_certificates):
            raise UsageError("give exactly one of --insecure and --root-certificates")
        if not 0.001 <= args.poll_interval <= 60:
            raise UsageError(f"--poll-interval must be between 0.001 and 60 s, "
                             f"got {args.poll_interval}")
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except UserError as exc:
        return report(PROG, exc)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # One line per poll (20 a second) would bury the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stop = threading.Event()
    install_signal_handlers(stop)
    serve_tasks(args.runtime_api_address, insecure=args.insecure,
                root_certificates=args.root_certificates,
                poll_interval=args.poll_interval, stop=stop)
    return 0
