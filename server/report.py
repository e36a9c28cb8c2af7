"""Tie the unlearning phase to the ledger and the report folder."""

from __future__ import annotations

import logging
import platform
import sys
import time
from pathlib import Path

from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

from fedunlearn.evaluation import write_report
from fedunlearn.ledger import Ledger
from server.intake import take_requests
from server.training import TrainOutcome
from server.unlearning import answer_requests

LOG = logging.getLogger("fedunlearn")


def ledger_path(cfg: DictConfig, out_dir: Path) -> Path:
    """The ledger file: ``unlearn.ledger``, relative paths under the run folder."""
    path = Path(str(cfg.unlearn.ledger))
    return path if path.is_absolute() else out_dir / path


def report_requests(grid: Grid, cfg: DictConfig, outcome: TrainOutcome, out_dir: Path) -> dict:
    """Take requests into the ledger, answer them, write ``report.md``, JSON and plots."""
    with Ledger(ledger_path(cfg, out_dir)) as ledger:
        take_requests(grid, cfg, outcome.nodes, ledger)
        rows, curves = answer_requests(grid, cfg, outcome, out_dir, ledger)
    if not rows:
        LOG.info("no request to answer")
        return {}
    meta = {
        "command": " ".join(sys.argv),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    paths = write_report(out_dir, rows, curves, title="fedunlearn: unlearning report", meta=meta)
    LOG.info("report: %s", paths.get("report.md", out_dir / "report.md"))
    return paths
