"""Phase two of the research job: take requests, answer them, write the report."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.serverapp import Grid

from fedunlearn.ledger import Ledger
from fedunlearn.settings import Job
from server.answers import answer_requests
from server.intake import take_requests
from server.report import report
from server.training import TrainOutcome

LOG = logging.getLogger("fedunlearn")


def ledger_path(settings: Job, out_dir: Path) -> Path:
    """The ledger file: ``unlearn.ledger``, relative paths under the run folder."""
    path = Path(settings.ledger)
    return path if path.is_absolute() else out_dir / path


def forget_requested(grid: Grid, outcome: TrainOutcome, out_dir: Path) -> dict:
    """Take requests into the ledger, answer them with every method, write the report.

    Returns
    -------
    dict
        The report's files by name (empty when no request was answered).
    """
    settings = outcome.settings
    with Ledger(ledger_path(settings, out_dir)) as ledger:
        take_requests(grid, settings, outcome.nodes, ledger)
        rows, curves = answer_requests(grid, outcome, out_dir, ledger)
    if not rows:
        LOG.info("no request to answer")
        return {}
    return report(settings, out_dir, rows, curves)
