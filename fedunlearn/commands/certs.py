"""``fedunlearn certs DIR``: the credentials of a TLS federation with node authentication.

``fedunlearn certs DIR [--names superlink,localhost] [--addresses 127.0.0.1]
[--nodes N] [--days D] [--force]`` writes a CA, the SuperLink's certificate (with a
SubjectAlternativeName for each name and address clients connect to) and one
authentication key pair per SuperNode into DIR (0700, files 0600), then prints each
file and what it is for. See :mod:`fedunlearn.pki` for the files and
``docs/deployment-security.md`` for the commands that use them.

A DIR that already holds credentials is refused unless ``--force``. This module
imports neither torch nor Hydra.
"""

from __future__ import annotations

from pathlib import Path

from fedunlearn.commands.args import OneLineParser
from fedunlearn.errors import UserError, report
from fedunlearn.pki import parse_addresses, parse_names, write_credentials

__all__ = ["PROG", "certs_command"]

PROG = "fedunlearn certs"


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        allow_abbrev=False,
        description="Write a CA, the SuperLink's TLS certificate and key, and one "
        "authentication key pair per SuperNode (Flower 1.42 formats) into DIR.",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="folder to write into (0700)")
    parser.add_argument("--names", default="superlink,localhost",
                        help="DNS names clients use for the SuperLink, comma-separated "
                             "(default: superlink,localhost)")
    parser.add_argument("--addresses", default="127.0.0.1",
                        help="IP addresses clients use for the SuperLink, comma-separated; "
                             "keep 127.0.0.1: the SuperLink's own SuperExec connects there "
                             "(default: 127.0.0.1)")
    parser.add_argument("--nodes", type=int, default=2,
                        help="number of SuperNode key pairs (default: 2)")
    parser.add_argument("--days", type=int, default=365,
                        help="validity of the certificates in days (default: 365)")
    parser.add_argument("--force", action="store_true",
                        help="replace the credentials DIR already holds")
    return parser


def certs_command(argv: list[str]) -> int:
    """Run ``fedunlearn certs``; 0 when DIR holds new credentials, 2 after one line."""
    try:
        args = _parser().parse_args(argv)
        written = write_credentials(
            args.dir,
            names=parse_names(args.names),
            addresses=parse_addresses(args.addresses),
            nodes=args.nodes,
            days=args.days,
            force=args.force,
        )
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except UserError as exc:
        return report(PROG, exc)
    width = max(len(str(path)) for path in written)
    for path, role in written.items():
        print(f"{str(path):<{width}}  {role}")
    return 0
