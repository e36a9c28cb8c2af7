"""The demo cluster for real: docker/compose.yaml on a container engine.

The cluster is brought up as the README shows (a one-shot `certs`, the SuperLink over TLS
with SuperNode authentication, `register`, two SuperNodes, the one-shot `submit` of the
default `serve` job: 4 rounds, a class-wise request scheduled at round 2). The test waits
for `submit` to exit, asserts that it exited 0 with the run `finished:completed`, reads
the run's `metrics.jsonl` and `serve.json` from the volume `outputs`, and sees every round
complete and the request answered. The cluster and its volumes are removed at the end,
even on failure. It runs under a project name of its own, so a demo cluster's volumes are
never touched.

It needs a running engine (`docker info` answers), a Compose CLI (`docker compose`, or
the older `docker-compose`, which is given a copy of the file without the top-level
`name:` it does not know) and the image `fedunlearn:latest` already built (`docker
compose -f docker/compose.yaml build`, or docker/local-image.sh on a machine without
registries). Without any of these it skips within seconds, saying which is missing; it
never installs or builds anything. FEDUNLEARN_CONTAINER_TEST=0 skips it on purpose.
`tests/test_docker.py` checks the file's structure everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
IMAGE = "fedunlearn:latest"
PROJECT = "fedunlearn-test"  # volumes fedunlearn-test_*, apart from the demo's
PORT = 9091  # the SuperLink's port, published on the host by compose.yaml
ROUNDS = 4  # the default demo's serve.rounds
UP_TIMEOUT = 600  # the one-shots and the health checks; generous on 2 busy cores
RUN_TIMEOUT = 1800  # submit: 4 rounds and an answer on 2 cores


def _probe(argv: list[str], timeout: float = 10) -> tuple[bool, str]:
    """Run a quick command: (succeeded, its last line of output or why it failed)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else f"exit {done.returncode}"


def _compose_cli() -> list[str] | None:
    """`docker compose` (v2) if present, else `docker-compose` (v1), else None."""
    if _probe(["docker", "compose", "version"])[0]:
        return ["docker", "compose"]
    if shutil.which("docker-compose") and _probe(["docker-compose", "version"])[0]:
        return ["docker-compose"]
    return None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def engine() -> list[str]:
    """The Compose command line, or a skip that says what is missing."""
    if os.environ.get("FEDUNLEARN_CONTAINER_TEST") == "0":
        pytest.skip("FEDUNLEARN_CONTAINER_TEST=0")
    if shutil.which("docker") is None:
        pytest.skip("no container engine: no `docker` CLI on PATH")
    ok, why = _probe(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=5)
    if not ok:
        pytest.skip(f"no container engine: `docker info` failed: {why}")
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI: neither `docker compose` nor `docker-compose` runs")
    if not _probe(["docker", "image", "inspect", IMAGE])[0]:
        pytest.skip(f"image {IMAGE} not built (docker compose -f docker/compose.yaml "
                    "build, or docker/local-image.sh); this test builds nothing")
    if not _port_free(PORT):
        pytest.skip(f"port {PORT}, which compose.yaml publishes, is in use on this host")
    return cli


def _compose_file(cli: list[str], tmp_path: Path) -> Path:
    """compose.yaml itself for Compose v2; for v1, a copy without the top-level `name:`
    (the project name is given with -p anyway) and with its build context made absolute."""
    if cli != ["docker-compose"]:
        return COMPOSE
    spec = yaml.safe_load(COMPOSE.read_text())
    spec.pop("name", None)
    for service in spec["services"].values():
        build = service.get("build")
        if isinstance(build, dict):
            build["context"] = str((COMPOSE.parent / build["context"]).resolve())
    copy = tmp_path / "compose.yaml"
    copy.write_text(yaml.safe_dump(spec, sort_keys=False))
    return copy


def _text(argv: list[str], timeout: float, env: dict | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def test_compose_cluster_serves_rounds_and_answers_a_request(engine, tmp_path):
    file = _compose_file(engine, tmp_path)
    compose = [*engine, "-p", PROJECT, "-f", str(file)]
    # The default demo job, whatever this shell sets.
    env = {k: v for k, v in os.environ.items()
           if k not in ("FEDUNLEARN_OVERRIDES", "FEDUNLEARN_JOB")}
    subprocess.run([*compose, "down", "-v", "--remove-orphans"], env=env,
                   capture_output=True, timeout=300)  # leftovers of an interrupted run
    started = time.monotonic()
    try:
        # Detached: the one-shots exit early, which `up --exit-code-from submit` takes for
        # the end of the cluster under Compose v1. `up` still starts each service only once
        # what it depends on is healthy or completed.
        up = subprocess.run([*compose, "up", "-d", "--no-build"], env=env, text=True,
                            capture_output=True, timeout=UP_TIMEOUT)
        logs = _text([*compose, "logs", "--no-color", "--tail", "100"], 120, env)
        assert up.returncode == 0, f"compose up failed:\n{up.stdout}{up.stderr}\n{logs}"
        submit = _text([*compose, "ps", "-q", "submit"], 60, env).strip()
        superlink = _text([*compose, "ps", "-q", "superlink"], 60, env).strip()
        assert submit and superlink, _text([*compose, "ps"], 60, env)
        waited = subprocess.run(["docker", "wait", submit], capture_output=True, text=True,
                                timeout=RUN_TIMEOUT)
        seconds = time.monotonic() - started
        output = _text(["docker", "logs", submit], 60)
        logs = _text([*compose, "logs", "--no-color", "--tail", "60"], 120, env)
        assert waited.stdout.strip() == "0", f"submit exited {waited.stdout}{waited.stderr}" \
                                             f"\n{logs}"
        report = json.loads(output.strip().splitlines()[-1])
        assert report["status"] == "finished:completed", report

        # The run's results, on the volume `outputs` that the SuperLink mounts.
        out = report["output_dir"]

        def read(name: str) -> str:
            return _text(["docker", "exec", superlink, "cat", f"{out}/{name}"], 60)

        rows = [json.loads(line) for line in read("metrics.jsonl").splitlines() if line.strip()]
        rounds = {r["round"]: r for r in rows if r.get("phase") == "serve"}
        assert sorted(rounds) == list(range(1, ROUNDS + 1)), rows
        assert all("skipped" not in r for r in rounds.values()), rounds
        summary = json.loads(read("serve.json"))
        assert summary["rounds"] == ROUNDS
        (answer,) = summary["answered"]
        assert (answer["kind"], answer["client"]) == ("class", 0)
        assert answer["taken_in_round"] == 2 and answer["answered_in_round"] >= 2, answer
        assert answer["method"] == "NoT"
        print(f"compose cluster: submit done after {seconds:.0f} s, run {report['run_id']}")
    finally:
        subprocess.run([*compose, "down", "-v", "--remove-orphans"], env=env,
                       capture_output=True, timeout=300)
        left = subprocess.run(["docker", "ps", "-aq", "--filter",
                               f"label=com.docker.compose.project={PROJECT}"],
                              capture_output=True, text=True, timeout=60).stdout.split()
        assert left == [], f"containers left behind: {left}"
