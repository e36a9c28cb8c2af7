"""Progress for people (one log line per round) and results for programs (JSONL)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from strategies.rounds import RoundRecord

LOG = logging.getLogger("fedunlearn")


def setup_logging(flower_level: str = "WARNING") -> None:
    """Show fedunlearn's progress at INFO on stderr; quiet Flower to ``flower_level``."""
    if not LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        LOG.addHandler(handler)
        LOG.propagate = False
    LOG.setLevel(logging.INFO)
    flwr = logging.getLogger("flwr")
    flwr.setLevel(flower_level)
    # Flower prints through its own handler; propagating too would print every line twice.
    flwr.propagate = False


class RunLog:
    """Appends each round to ``<out>/metrics.jsonl`` and logs a progress line."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[RoundRecord] = []

    def __call__(self, record: RoundRecord) -> None:
        """Record one round."""
        self.records.append(record)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record.as_dict()) + "\n")
        ev = record.evaluation
        acc = f" test acc {100 * ev['test_accuracy']:.2f}%" if "test_accuracy" in ev else ""
        loss = f" loss {ev['test_loss']:.4f}" if "test_loss" in ev else ""
        refused = f" ({record.refused} refused)" if record.refused else ""
        LOG.info("[%s] round %d/%d%s%s | %d nodes%s | %.1f s", record.phase, record.round,
                 record.rounds, acc, loss, record.nodes, refused, record.seconds)
