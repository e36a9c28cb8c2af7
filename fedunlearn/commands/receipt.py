"""``fedunlearn receipt``: export a ledger's receipts, verify a receipt and the chain.

``fedunlearn receipt export --ledger LEDGER --out FILE`` writes every receipt of a
server's ledger, in chain order, as a JSON list. ``fedunlearn receipt verify
RECEIPT --public-key KEY [--ledger-export FILE]`` checks a receipt's signature with
the server's public key and, with an export, every signature of the chain, that
each receipt names the one before it, and that RECEIPT is one of them. Any edited
byte fails; the exit code is 0 when everything checks and 2 otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedunlearn.commands.args import OneLineParser, UsageError
from fedunlearn.errors import UserError, report
from fedunlearn.receipts import ReceiptInvalid, load_public_key, verify, verify_chain

__all__ = ["receipt_command"]

PROG = "fedunlearn receipt"


def _parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, allow_abbrev=False,
                           description="Export or verify signed, chained receipts.")
    sub = parser.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    export = sub.add_parser("export", help="write a ledger's receipts as a JSON list")
    export.add_argument("--ledger", required=True, type=Path)
    export.add_argument("--out", required=True, type=Path)
    check = sub.add_parser("verify", help="check a receipt's signature (and the chain)")
    check.add_argument("receipt", type=Path)
    check.add_argument("--public-key", required=True, type=Path)
    check.add_argument("--ledger-export", type=Path)
    return parser


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def receipt_command(argv: list[str]) -> int:
    """Run ``fedunlearn receipt``; 0 when it did what was asked, 2 after one line."""
    try:
        args = _parser().parse_args(argv)
        if args.action == "export":
            from fedunlearn.ledger import Ledger

            if not args.ledger.is_file():
                raise UsageError(f"no ledger at {args.ledger}")
            with Ledger(args.ledger) as ledger:
                chain = ledger.chain()
            args.out.write_text(json.dumps(chain, indent=1, sort_keys=True))
            print(f"{len(chain)} receipts written to {args.out}")
            return 0
        key = load_public_key(args.public_key)
        receipt = _json(args.receipt)
        if not isinstance(receipt, dict):
            raise ReceiptInvalid(f"{args.receipt} holds no receipt (a JSON object)")
        verify(receipt, key)
        if args.ledger_export is not None:
            chain = _json(args.ledger_export)
            if not isinstance(chain, list):
                raise ReceiptInvalid(f"{args.ledger_export} holds no list of receipts")
            count = verify_chain(chain, key)
            if receipt not in chain:
                raise ReceiptInvalid("the receipt is not in the ledger's chain")
            print(f"receipt verified; chain of {count} receipts intact")
        else:
            print("receipt verified (signature)")
        return 0
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except UserError as exc:
        return report(PROG, exc)
