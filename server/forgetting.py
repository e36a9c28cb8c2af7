"""Phase two of the research job: take requests, answer them, write the report."""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.serverapp import Grid

from fedunlearn.ledger import Ledger
from fedunlearn.receipts import load_or_create_key, write_public_key
from fedunlearn.settings import Job
from server.answers import answer_requests
from server.delivery import deliver
from server.intake import scheduled_request, take_requests
from server.report import report
from server.training import TrainOutcome

LOG = logging.getLogger("fedunlearn")


def ledger_path(settings: Job, out_dir: Path) -> Path:
    """The ledger file: ``unlearn.ledger``, relative paths under the run folder."""
    path = Path(settings.ledger)
    return path if path.is_absolute() else out_dir / path


def signing_key(settings: Job, ledger: Path) -> Ed25519PrivateKey:
    """The server's receipt-signing key (made once, kept 0600 in its state folder); its
    public half is written beside the ledger and named in the log."""
    state = Path(settings.state_dir) if settings.state_dir else ledger.parent / "state"
    key = load_or_create_key(state)
    public = write_public_key(key, ledger.with_suffix(".pub.pem"))
    LOG.info("receipts are signed by %s; public key: %s", state / "server-key.pem", public)
    return key


def forget_requested(grid: Grid, outcome: TrainOutcome, out_dir: Path) -> dict:
    """Take requests into the ledger, answer them with every method, write the report.

    Returns
    -------
    dict
        The report's files by name (empty when no request was answered).
    """
    settings = outcome.settings
    path = ledger_path(settings, out_dir)
    key = signing_key(settings, path)
    with Ledger(path) as ledger:
        scheduled = scheduled_request(settings)
        take_requests(grid, outcome.nodes, ledger, settings.train.round_timeout,
                      [scheduled] if scheduled is not None else [])
        answers = answer_requests(grid, outcome, out_dir, ledger, key)
        # The answered requests' data is deleted on its nodes; no model is adopted here,
        # so no receipt is delivered.
        deliver(grid, ledger, outcome.nodes, settings, outcome.federation, out_dir,
                settings.train.round_timeout, [ledger.get(i).request for i in answers.served],
                receipts=False)
    if not answers.rows:
        LOG.info("no request to answer")
        return {}
    return report(settings, out_dir, answers.rows, answers.curves)
