"""The unlearning report of a run: Markdown, JSON and plots, with how they were made."""

from __future__ import annotations

import logging
import platform
import sys
import time
from pathlib import Path

from fedunlearn.evaluation import write_report
from fedunlearn.settings import Job

LOG = logging.getLogger("fedunlearn")


def report(settings: Job, out_dir: Path, rows: list[dict], curves: list[dict]) -> dict:
    """Write ``report.md``, ``results.json`` and the curves' PNGs for ``rows`` and ``curves``.

    The report names the command, the config, the machine and the date it came from.
    """
    meta = {
        "command": " ".join(sys.argv),
        "config": dict(settings.config),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    paths = write_report(out_dir, rows, curves, title="fedunlearn: unlearning report", meta=meta)
    LOG.info("report: %s", paths.get("report.md", out_dir / "report.md"))
    return paths
