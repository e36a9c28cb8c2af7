"""The ``fedunlearn`` console command: picks the sub-command and hands it the arguments.

Each sub-command lives in its own module of :mod:`fedunlearn.commands`, imported
only when it runs: ``fedunlearn forget`` on a client machine loads neither Hydra
nor torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from fedunlearn.errors import report

__all__ = ["COMMANDS", "main"]

USAGE = """usage: fedunlearn COMMAND [--multirun] [OVERRIDE ...]

commands:
  run      the whole story: train the global model (or reuse the cached one), take
           the forget requests (scenario=client|class|instance|backdoor|none), answer
           each with every method in unlearn.methods, write report.md, JSON, plots
  train    train the global model with FedAvg only
  serve    a live federation: FedAvg rounds, forget requests answered as they come
           (serve.method, default NoT), the answer's model served from then on
  forget   record a forget request on a client machine (see `fedunlearn forget -h`)
  receipt  export a ledger's signed receipts, or verify a receipt and the chain
  data     list or check a SuperNode's own data folder (node config data-dir):
           `fedunlearn data ids|check --data-dir DIR`
  certs    write a CA, the SuperLink's TLS certificate and SuperNode key pairs
           (see `fedunlearn certs -h` and docs/deployment-security.md)
  node-executor
           serve a SuperNode's messages (flower-supernode --isolation process) from
           a pre-warmed parent: one forked process per message, torch imported once

runtime=simulation (default) runs Flower's Ray simulation; runtime=deployment starts a
local SuperLink and SuperNodes and runs the same apps over gRPC.

overrides are Hydra's, e.g. `fedunlearn train model=cnn_nonorm train.rounds=5 num_clients=4`;
`fedunlearn train --cfg job` prints the composed config."""

# Sub-command -> "module:function"; the function takes the arguments after the
# sub-command and returns the exit code.
COMMANDS: dict[str, str] = {
    "run": "fedunlearn.commands.jobs:run_command",
    "train": "fedunlearn.commands.jobs:train_command",
    "serve": "fedunlearn.commands.jobs:serve_command",
    "forget": "fedunlearn.commands.forget:forget_command",
    "receipt": "fedunlearn.commands.receipt:receipt_command",
    "certs": "fedunlearn.commands.certs:certs_command",
    "data": "fedunlearn.commands.data:data_command",
    "node-executor": "fedunlearn.commands.executor:executor_command",
}


def _command(name: str) -> Callable[[list[str]], int]:
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedunlearn`` command; returns the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after ``fedunlearn``; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        0 on success; an unknown sub-command exits with code 2 after one line on
        stderr (as do the jobs' user errors).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.exit(report("fedunlearn", f"unknown command '{name}'; known: {', '.join(COMMANDS)}"))
    return _command(name)(rest)


if __name__ == "__main__":
    sys.exit(main())
