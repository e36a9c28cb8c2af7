"""The container image and demo cluster: structure of docker/compose.yaml and the Dockerfile.

No Docker engine is needed: the YAML and Dockerfile checks always run; where the Compose
CLI exists, ``docker compose config -q`` also validates the file (it needs no engine).
"""

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from flwr.common.config import parse_config_args

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
LINK = "superlink:9091"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _argv(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def _supernodes(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if n.startswith("supernode-")}


CREDS = Path("/srv/certs/federation")


def test_services(compose: dict) -> None:
    names = set(compose["services"])
    assert {"certs", "superlink", "register", "submit"} <= names
    assert len(_supernodes(compose)) >= 2
    assert names == {"certs", "superlink", "register", "submit", *_supernodes(compose)}


def test_certs_are_made_once_for_every_node(compose: dict, tmp_path: Path) -> None:
    """The one-shot `certs` writes the credentials on first start and keeps them after."""
    certs = compose["services"]["certs"]
    assert certs["restart"] == "no"
    script = _argv(certs)[2]
    assert _argv(certs)[:2] == ["sh", "-c"]
    command = shlex.split(script.split("||", 1)[1])
    assert command[:3] == ["fedunlearn", "certs", str(CREDS)]
    assert int(_option(command, "--nodes")) == len(_supernodes(compose))
    assert "superlink" in _option(command, "--names").split(",")  # how containers reach it
    assert "127.0.0.1" in _option(command, "--addresses").split(",")  # its own SuperExec
    # Run for real into a temporary folder, twice: the second start keeps the first's.
    local = script.replace(str(CREDS), str(tmp_path / "federation")).replace(
        "fedunlearn certs", f"{Path(sys.executable).parent / 'fedunlearn'} certs")
    assert subprocess.run(["sh", "-c", local]).returncode == 0
    ca = (tmp_path / "federation" / "ca.crt").read_bytes()
    assert subprocess.run(["sh", "-c", local]).returncode == 0
    assert (tmp_path / "federation" / "ca.crt").read_bytes() == ca
    assert (tmp_path / "federation").stat().st_mode & 0o777 == 0o700
    # Every other service mounts them read-only.
    for name, service in compose["services"].items():
        if name != "certs":
            assert "certs:/srv/certs:ro" in service["volumes"], name


def test_register_registers_every_node_key(compose: dict, tmp_path: Path,
                                           monkeypatch) -> None:
    from fedunlearn.runtime import flwr_cli

    register = compose["services"]["register"]
    assert register["depends_on"]["superlink"]["condition"] == "service_healthy"
    for name, node in _supernodes(compose).items():
        assert node["depends_on"]["register"]["condition"] == \
            "service_completed_successfully", name
    keys = tmp_path / "federation"
    keys.mkdir()
    for k in range(len(_supernodes(compose))):
        (keys / f"supernode-{k}.pub").write_text("key")
    calls = []
    monkeypatch.setattr(flwr_cli, "register_node",
                        lambda home, key, connection: calls.append((key.name, connection)))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    exec(_argv(register)[2].replace(str(CREDS), str(keys)), {"__name__": "__main__"})
    assert calls == [(f"supernode-{k}.pub", "docker")
                     for k in range(len(_supernodes(compose)))]
    connection = tomllib.loads((tmp_path / "home" / "config.toml").read_text())
    assert connection["superlink"]["docker"] == {
        "address": LINK, "root-certificates": str(keys / "ca.crt")}


def test_every_service_builds_the_one_image(compose: dict) -> None:
    images = set()
    for name, service in compose["services"].items():
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, f"{name}: build context {context} is not the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert DOCKERFILE.is_file()
        images.add(service["image"])
    assert len(images) == 1


def _superlink_command(link: dict) -> tuple[str, list[str]]:
    """The superlink's shell preparation and the argv it execs."""
    argv = _argv(link)
    assert argv[:2] == ["sh", "-c"], argv
    prepare, _, command = argv[2].partition("&& exec ")
    assert command, argv[2]
    return prepare, shlex.split(command)


def test_superlink(compose: dict) -> None:
    link = compose["services"]["superlink"]
    prepare, argv = _superlink_command(link)
    assert subprocess.run(["sh", "-n", "-c", _argv(link)[2]]).returncode == 0  # valid sh
    assert argv[0] == "flower-superlink"
    # TLS and SuperNode authentication, with the `certs` service's files.
    assert "--insecure" not in argv and "--enable-supernode-auth" in argv
    assert _option(argv, "--ssl-ca-certfile") == str(CREDS / "ca.crt")
    assert _option(argv, "--ssl-certfile") == str(CREDS / "superlink.crt")
    assert _option(argv, "--ssl-keyfile") == str(CREDS / "superlink.key")
    assert link["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert "--disable-runtime-dependency-installation" in argv
    assert _option(argv, "--host") == "0.0.0.0"
    assert _option(argv, "--port") == LINK.split(":")[1]
    assert "9091" in " ".join(link["healthcheck"]["test"])
    assert any(v.startswith("outputs:") for v in link["volumes"])
    # Its state is a database on a volume of its own, created private (umask 077: folder
    # 0700, file 0600) before the SuperLink opens it.
    database = Path(_option(argv, "--database"))
    mounts = dict(volume.split(":", 1) for volume in link["volumes"])
    holding = [source for source, target in mounts.items() if database.is_relative_to(target)]
    assert len(holding) == 1 and holding[0] in compose["volumes"], holding
    assert holding[0] != "outputs"  # the submit container mounts outputs, not the state
    assert prepare.startswith("(umask 077 &&")
    assert f"mkdir -p {database.parent}" in prepare and f"touch {database}" in prepare


def test_restart_policies(compose: dict) -> None:
    services = compose["services"]
    for name in ("superlink", *_supernodes(compose)):
        assert services[name]["restart"] == "unless-stopped", name
    for name in ("certs", "register", "submit"):
        assert services[name]["restart"] == "no", name  # a one-shot job must not loop


def test_supernodes(compose: dict) -> None:
    nodes = _supernodes(compose)
    partitions, outbox_volumes = [], []
    for name, node in nodes.items():
        argv = _argv(node)
        assert argv[0] == "flower-supernode"
        assert "--insecure" not in argv
        assert _option(argv, "--root-certificates") == str(CREDS / "ca.crt")
        assert _option(argv, "--superlink") == LINK
        assert _option(argv, "--host") == "0.0.0.0"
        # Parsed as flower-supernode parses it (values are TOML: paths must be quoted).
        config = parse_config_args([_option(argv, "--node-config")])
        assert config["num-partitions"] == len(nodes), name
        assert name == f"supernode-{config['partition-id']}"
        # Its own key: the one `register` registered for this partition.
        assert _option(argv, "--auth-supernode-private-key") == \
            str(CREDS / f"supernode-{config['partition-id']}.key")
        partitions.append(config["partition-id"])
        # The outbox lies on the node's own named volume, so it survives restarts.
        mounts = dict(volume.split(":", 1) for volume in node["volumes"])
        holding = [source for source, target in mounts.items()
                   if Path(config["outbox"]).is_relative_to(target)]
        assert len(holding) == 1 and holding[0] in compose["volumes"], name
        outbox_volumes.append(holding[0])
        assert node["depends_on"]["superlink"]["condition"] == "service_healthy"
        assert _option(argv, "--port") in " ".join(node["healthcheck"]["test"])
    assert sorted(partitions) == list(range(len(nodes)))
    assert len(set(outbox_volumes)) == len(nodes)  # no two nodes share an outbox


def test_submit(compose: dict) -> None:
    from fedunlearn.runtime import flwr_cli

    submit = compose["services"]["submit"]
    assert set(submit["depends_on"]) == {"superlink", *_supernodes(compose)}
    argv = _argv(submit)
    assert argv[:2] == ["python", "-c"]
    script = argv[2]
    compile(script, "submit", "exec")  # valid Python
    assert f'"{LINK}"' in script
    # It drives `flwr run` / `flwr ls` through the functions the local deployment uses.
    for name in ("write_connection", "submit"):
        assert f"{name}(" in script and callable(getattr(flwr_cli, name))
    assert flwr_cli.APP_DIR == ROOT  # `flwr run /app` in the image: the repo root
    # It sets every key of the app's run config (pyproject.toml), and no other.
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    run_config = re.search(r"run_config = (\{.*\})", script)
    assert run_config, script
    assert set(re.findall(r'"([\w-]+)":', run_config.group(1))) == set(app_config["config"])
    # The default overrides match the number of SuperNodes.
    assert submit["environment"]["OVERRIDES"] == "${FEDUNLEARN_OVERRIDES:-}"
    default = re.search(r'demo = "([^"]*)"', script)
    assert default, script
    # Compose ends ${VAR:-default} at the first "}": no default may hold braces.
    assert not re.search(r"\$\{\w+:-[^}]*\{", COMPOSE.read_text())
    assert f"num_clients={len(_supernodes(compose))}" in default.group(1).split()
    assert any(v.startswith("outputs:") for v in submit["volumes"])
    assert "outputs" in compose["volumes"]


@pytest.mark.parametrize("status", ["finished:completed", "finished:failed"])
def test_submit_script_runs(compose: dict, tmp_path: Path, monkeypatch, capsys,
                            status: str) -> None:
    """Run the script with `flwr` replaced: connection file, run config, exit code."""
    from fedunlearn.runtime import flwr_cli

    calls = []

    def fake_submit(home: Path, run_config: dict, *, connection: str) -> tuple[int, str]:
        calls.append((home, run_config, connection))
        return 7, status

    monkeypatch.setattr(flwr_cli, "submit", fake_submit)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    monkeypatch.setenv("OVERRIDES", "num_clients=2 train.rounds=1")
    monkeypatch.setenv("JOB", "train")
    with pytest.raises(SystemExit) as exit_info:
        exec(_argv(compose["services"]["submit"])[2], {"__name__": "__main__"})
    assert exit_info.value.code == (0 if status == "finished:completed" else 1)
    connections = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert connections["docker"] == {"address": LINK,
                                     "root-certificates": str(CREDS / "ca.crt")}
    ((home, run_config, connection),) = calls
    assert (home, connection, run_config["job"]) == (tmp_path, "docker", "train")
    assert run_config["overrides"] == "num_clients=2 train.rounds=1 cache_dir=/srv/fedunlearn/cache"
    assert run_config["output-dir"].startswith("/srv/fedunlearn/outputs/")
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report == {"run_id": 7, "status": status, "output_dir": run_config["output-dir"]}


def _instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", text)
    lines = (" ".join(line.split()) for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerfile_installs_pinned_torch_before_the_project() -> None:
    code = _instructions(DOCKERFILE.read_text())
    # The base image and a local wheel folder are build arguments (docker/README.md:
    # machines without a registry); without them the build is the usual one.
    assert code[:3] == ["ARG BASE_IMAGE=python:3.11-slim", "FROM ${BASE_IMAGE}", "ARG WHEELS="]
    pins = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"] if d.startswith(("torch==", "torchvision=="))]
    assert len(pins) == 2

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(code) if re.search(pattern, line))

    torch = first(r"pip install .*torch==")
    for pin in pins:  # the same pins as pyproject.toml and scripts/setup.sh
        assert f'"{pin}"' in code[torch]
    copy = first(r"^COPY .* \. /app$")
    project = first(r"pip install -e \.")
    assert first(r"-m venv /app/\.venv") <= torch < copy < project
    assert re.search(r"PATH=/app/\.venv/bin:", code[first(r"^ENV .*PATH=")])
    user = first(r"^USER ")
    assert code[user].split()[1] not in ("root", "0")
    assert project < user < first(r"^CMD ")
    assert "--help" in code[first(r"^CMD ")]


def test_build_context_leaves_the_local_venv_out() -> None:
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "outputs", ".cache", ".git"} <= set(ignored)


def _compose_cli() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
    return probe.returncode == 0


def test_docker_compose_config() -> None:
    if not _compose_cli():
        pytest.skip("no `docker compose` CLI here; the YAML checks above still ran")
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
