"""Flower simulation with the Ray backend, launched in-process (``runtime.launch=in-process``).

:func:`simulate` runs the ServerApp through ``flwr.simulation.run_simulation``
(deprecated in Flower 1.42, still shipped) in this process: the way to join an
existing Ray cluster (``runtime.ray_address``) and to pass another ClientApp
(``bench/robust.py``). The default launch is ``flwr run``
(:mod:`fedunlearn.runtime.flwr_simulation`, whose `--federation-config` carries the
same resources).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def backend_config(cfg: DictConfig) -> dict[str, Any]:
    """Ray backend settings from ``cfg.runtime``: client resources, and either the CPUs of
    a local Ray instance or the address of an existing Ray cluster to join
    (``runtime.ray_address``; the cluster then owns its resources)."""
    init_args: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR"}
    if cfg.runtime.ray_address is not None:
        init_args["address"] = str(cfg.runtime.ray_address)
    elif cfg.runtime.num_cpus is not None:
        init_args["num_cpus"] = int(cfg.runtime.num_cpus)
    return {
        "client_resources": {
            "num_cpus": int(cfg.runtime.client_cpus),
            "num_gpus": float(cfg.runtime.client_gpus),
        },
        "init_args": init_args,
    }


def simulate(cfg: DictConfig, out_dir: Path, job: str = "run", client_app: Any = None) -> Any:
    """Run the server job in Flower's simulation runtime; return its outcome.

    ``client_app`` replaces the project's ClientApp (e.g. :func:`client.rogue.rogue_app`
    in robustness benchmarks).

    Raises
    ------
    BaseException
        Whatever the ServerApp raised, re-raised here so the caller sees it.
    """
    # Imported here: flwr.simulation pulls in Ray, which the other runtime never needs.
    from flwr.simulation import run_simulation

    from server.app import make_server_app

    if client_app is None:
        from client.app import app as client_app

    # Keep Ray's pre-2.56 device-variable behaviour without its warning on every run.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    sink: dict[str, Any] = {}
    run_simulation(
        server_app=make_server_app(cfg, out_dir, sink, job),
        client_app=client_app,
        num_supernodes=int(cfg.num_clients),
        backend_config=backend_config(cfg),
    )
    if "error" in sink:
        raise sink["error"]
    if "outcome" not in sink:
        raise RuntimeError("the simulation ended without a result (see the log above)")
    return sink["outcome"]
