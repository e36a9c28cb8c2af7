"""``fedunlearn forget``: record a request to forget some of this client's data.

Run on a client machine: the request goes into the client's
:class:`~fedunlearn.outbox.Outbox`, and the ClientApp sends it to the server
with its next reply. The command checks the request's shape and bounds, and that
``--client`` is the partition of the node that owns the outbox once the ClientApp
has recorded it (:meth:`~fedunlearn.outbox.Outbox.partition`); whether the
request can be carried out is the server's to decide. ``--cancel ID`` removes a
request that has not been sent yet; ``--status`` lists where each request stands
(unsent, sent, done, with the receipt's method and model and the node's self-check of
it) and ``--receipt ID`` prints a done request's receipt, as the server sealed it.

This module imports neither torch nor the data layer: the command starts fast.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedunlearn.commands.args import OneLineParser, UsageError
from fedunlearn.errors import UserError, report
from fedunlearn.outbox import Outbox, OutboxError, RequestStatus
from fedunlearn.requests import KINDS, ForgetRequest, new_request_id

__all__ = ["PROG", "forget_command"]

PROG = "fedunlearn forget"


def _id_list(text: str) -> tuple[int, ...]:
    try:
        # Bounds are ForgetRequest's (below 2^63); parsing only needs integers.
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sample ids like 1,2,3, got '{text}'"
        ) from None


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        allow_abbrev=False,
        description="Record a request to forget some of this client's data; the ClientApp "
        "sends it to the server with its next reply. Prints the request id. "
        "With --cancel ID, remove a request that has not been sent yet; with --status, "
        "list every request and where it stands; with --receipt ID, print its receipt.",
    )
    parser.add_argument("--outbox", required=True, type=Path, help="the client's outbox file")
    instead = parser.add_mutually_exclusive_group()
    instead.add_argument("--cancel", metavar="ID", help="remove this unsent request instead")
    instead.add_argument("--status", action="store_true",
                         help="list every request: unsent, sent or done (with its receipt)")
    instead.add_argument("--receipt", metavar="ID",
                         help="print the receipt (JSON) of this done request")
    parser.add_argument("--client", type=int, help="this client's partition id")
    parser.add_argument("--kind", choices=KINDS, help="what to forget")
    parser.add_argument("--class", dest="cls", type=int, help="class to forget (kind class)")
    parser.add_argument("--ids", type=_id_list, help="sample ids to forget (kind instance)")
    parser.add_argument(
        "--fraction", type=float, help="share of this client's samples (kind instance)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fraction draw")
    return parser


def forget_command(argv: list[str]) -> int:
    """``fedunlearn forget``: add a request for this client's data to its outbox.

    ``fedunlearn forget --outbox PATH --client K --kind KIND [--class C]
    [--ids 1,2,3] [--fraction F] [--seed S]``. Kind ``class`` needs ``--class``;
    kind ``instance`` needs one of ``--ids`` and ``--fraction`` (a fraction of
    this client's own samples); kinds ``client`` and ``backdoor`` take neither.
    ``fedunlearn forget --outbox PATH --cancel ID`` removes an unsent request;
    ``--status`` prints one line per request, ``--receipt ID`` a done request's receipt.

    Parameters
    ----------
    argv : list of str
        The arguments after ``forget``.

    Returns
    -------
    int
        0 after printing the new (or cancelled) request id, the status or the
        receipt; 2 after a one-line error on stderr.
    """
    try:
        args = _parser().parse_args(argv)
        if args.cancel is not None:
            with _open(args.outbox) as outbox:
                outbox.cancel(args.cancel)
            print(f"cancelled {args.cancel}")
            return 0
        if args.status or args.receipt is not None:
            return _show(args.outbox, args.receipt)
        if args.client is None or args.kind is None:
            raise UsageError("the following arguments are required: --client, --kind")
        request = ForgetRequest(
            request_id=new_request_id(),
            kind=args.kind,
            client=args.client,
            cls=args.cls,
            ids=args.ids,
            fraction=args.fraction,
            # A client's fraction applies to its own samples only.
            clients=(args.client,) if args.fraction is not None else None,
            seed=args.seed,
            origin="client",
        )
        with _open(args.outbox) as outbox:
            owner = outbox.partition()
            if owner is not None and owner != request.client:
                raise OutboxError(f"this outbox belongs to client {owner}, not client "
                                  f"{request.client}")
            outbox.add(request)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except UserError as exc:  # usage, a refused request, the outbox
        return report(PROG, exc)
    print(request.request_id)
    return 0


def _show(path: Path, receipt_id: str | None) -> int:
    """Print the outbox's status, or the receipt of ``receipt_id``; never creates a file."""
    if not path.is_file():
        raise OutboxError(f"no outbox at {path}")
    with _open(path) as outbox:
        if receipt_id is None:
            for entry in outbox.status():
                print(_status_line(entry))
            return 0
        receipt = outbox.receipt(receipt_id)
    if receipt is None:
        raise OutboxError(f"no receipt for request '{receipt_id}' in the outbox")
    # The stored text (sorted keys, standard JSON): what the server signed, unchanged.
    print(json.dumps(receipt, sort_keys=True, allow_nan=False))
    return 0


def _status_line(entry: RequestStatus) -> str:
    """One line of ``--status``: id, what it forgets, state, and for a done request its
    method, model digest (12 hex digits) and the node's self-check."""
    request = entry.request
    what = request.kind + (f" {request.cls}" if request.cls is not None else "")
    parts = [request.request_id, f"{what} (client {request.client})", entry.state]
    if entry.receipt is not None:
        parts += [str(entry.receipt.get("method", "?")),
                  f"model {str(entry.receipt.get('model_after', '?'))[:12]}"]
    check = entry.self_check or {}
    for key, label in (("forget-accuracy", "forget acc"), ("mia", "MIA"), ("asr", "ASR")):
        if key in check:
            parts.append(f"{label} {check[key]:.1f}%")
    for key, label, bad in (("model-matches", "model", "MISMATCH"),
                            ("signature-ok", "signature", "INVALID")):
        if key in check:
            parts.append(f"{label} {'ok' if check[key] else bad}")
    return "  ".join(parts)


@contextmanager
def _open(path: Path) -> Iterator[Outbox]:
    """The outbox at ``path``; file errors become one-line :class:`OutboxError`s."""
    try:
        outbox = Outbox(path)
    except (sqlite3.Error, OSError) as exc:
        # sqlite's own message ("unable to open database file") names no file.
        raise OutboxError(f"cannot use the outbox {path}: {exc}") from exc
    try:
        yield outbox
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot use the outbox {path}: {exc}") from exc
    finally:
        outbox.close()
