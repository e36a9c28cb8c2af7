"""The Flower ServerApp: one job for every runtime.

Deployment loads the module-level ``app``, which rebuilds the config from the
run config's ``overrides``; simulation builds an app around an already composed
config with :func:`make_server_app`. Both run :func:`run_job`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from fedunlearn import protocol as P
from fedunlearn.config import compose, parse_overrides
from fedunlearn.errors import UserError
from fedunlearn.federation import build_federation
from fedunlearn.settings import Job
from server.grid import CollectingGrid
from server.progress import setup_logging
from server.training import TrainOutcome, train_global

JOBS = ("train", "run", "serve")


def run_job(grid: Grid, cfg: DictConfig, out_dir: Path, job: str = "run") -> TrainOutcome:
    """The server's job: train (or reuse) the global model; for ``run`` also take the
    forget requests, answer each with every configured method and write the report."""
    if job not in JOBS:
        raise ValueError(f"unknown job '{job}'; known: {', '.join(JOBS)}")
    # The edge: the config is read once, into typed settings, and the data built once.
    settings = Job.from_config(cfg)
    federation = build_federation(cfg)
    setup_logging(settings.flower_log_level)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = CollectingGrid(grid, float(cfg.runtime.get("collect_interval", 0.05)))
    try:
        if job == "serve":
            from server.serve import serve

            return serve(grid, settings, federation, out_dir)
        outcome = train_global(grid, settings, federation, out_dir)
        if job == "run":
            from server.forgetting import forget_requested

            forget_requested(grid, outcome, out_dir)
        return outcome
    finally:
        # Where each message's time went (bench/deployment reads it).
        (out_dir / "messages.json").write_text(json.dumps(grid.timeline))


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run`` (deployment, and simulation launched with ``flwr run``):
    config from the run config, then :func:`run_job`; ``serverapp.done`` written at the
    end, whatever happened."""
    out = Path(str(context.run_config.get("output-dir", ""))
               or f"outputs/flwr-run-{context.run_id}")
    outcome: dict[str, Any] = {"run_id": context.run_id, "ok": False}
    try:
        cfg = compose(parse_overrides(str(context.run_config.get("overrides", ""))))
        run_job(grid, cfg, out, str(context.run_config.get("job", "run")))
        outcome["ok"] = True
    except BaseException as exc:
        # One line for the launcher's error message: the user's own mistakes
        # (UserError) as they are, anything else with its type.
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        outcome["error"] = (line if isinstance(exc, UserError) and line
                            else f"{type(exc).__name__}: {line}".rstrip(": "))
        raise
    finally:
        out.mkdir(parents=True, exist_ok=True)
        # The launcher asks Flower for the run's status as soon as this file appears.
        (out / P.DONE_FILE).write_text(json.dumps(outcome))


def make_server_app(
    cfg: DictConfig, out_dir: Path, sink: dict[str, Any], job: str = "run"
) -> ServerApp:
    """A ServerApp bound to ``cfg`` (simulation); its outcome or error lands in ``sink``."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            sink["outcome"] = run_job(grid, cfg, out_dir, job)
        except BaseException as exc:  # re-raised by the caller, outside Flower's thread
            sink["error"] = exc
            raise

    return server_app
