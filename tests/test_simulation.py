"""The main command in Flower's Ray simulation: trains, records, caches, refuses."""

import json
import subprocess

import pytest
import torch

from fedunlearn.runtime.processes import group_members

pytestmark = pytest.mark.integration

FAST = ["dataset=digits", "num_clients=2", "train.rounds=2", "runtime.num_cpus=2"]


def run(cmd, tmp_path, *overrides):
    return subprocess.run(
        [*cmd, "train", *FAST, f"cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={tmp_path / 'out'}", *overrides],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )


def test_two_rounds_then_reuse(fedunlearn_cmd, tmp_path):
    first = run(fedunlearn_cmd, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "out"
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["client_metrics"]["num-examples"] > 0
    assert rounds[-1]["client_metrics"]["flops"] > 0
    assert rounds[-1]["client_metrics"]["bytes-sent"] > 0
    summary = json.loads((out / "train.json").read_text())
    assert summary["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert not summary["reused"]
    ckpt = torch.load(out / "global.pt", weights_only=True)
    assert set(ckpt["initial"]) == set(ckpt["final"])
    assert any(not torch.equal(ckpt["initial"][k], ckpt["final"][k]) for k in ckpt["final"])
    assert "round 2/2 test acc" in first.stderr  # progress shown
    # Flower's supported path (the default): submitted with `flwr run` to a simulation
    # SuperLink of the job's own, every process group below it stopped at the end.
    record = json.loads((out / "simulation.json").read_text())
    assert record["status"] == "finished:completed" and record["process_groups_stopped"]
    assert all(not group_members(pgid) for pgid in record["process_groups_stopped"])
    assert "round 2/2" in (out / "serverapp.log").read_text()

    (out / "metrics.jsonl").unlink()
    # The cache, not the launcher, is under test now: the quicker in-process launch.
    second = run(fedunlearn_cmd, tmp_path, "runtime.launch=in-process")
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads((out / "train.json").read_text())
    assert again["reused"] and again["test_accuracy"] == summary["test_accuracy"]
    assert not (out / "metrics.jsonl").exists()  # no round was run


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("dataset=nope", "unknown dataset 'nope'"),
        ("model.name=vgg", "unknown model 'vgg'"),
        ("partition=dirichlet partition.beta=0", "partition.beta must be a number > 0"),
        ("dataset=cifar10", "dataset.root"),
        ("num_clients=5000", "5000"),
    ],
)
def test_bad_input_one_line(fedunlearn_cmd, tmp_path, override, needle):
    done = run(fedunlearn_cmd, tmp_path, *override.split())
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("fedunlearn: error:")]
    assert len(errors) == 1 and needle in errors[0], done.stderr[-1500:]


def test_a_sweep_repeats_a_seed_bit_for_bit_and_tells_seeds_apart(fedunlearn_cmd, tmp_path):
    """One ``--multirun`` of seeds 0, 0, 1 in one process, each job training afresh.

    Clients train at once in Ray: their replies arrive in any order, and node ids are
    drawn anew each job; the aggregate must depend on neither (4 clients, 2 a round: a
    wrong order would pass by chance), nor on what an earlier job of the same process
    left behind (global RNGs, caches). The sweep and the aggregation, not the launcher,
    are under test: the quicker in-process launch.
    """
    done = subprocess.run(
        [*fedunlearn_cmd, "train", "--multirun", "seed=0,0,1", "dataset=digits",
         "num_clients=4", "train.fraction_train=0.5", "train.rounds=2", "runtime.num_cpus=2",
         "runtime.launch=in-process", "reuse_trained=false",
         f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = [tmp_path / "sweep" / str(job) for job in (0, 1, 2)]
    summaries = [json.loads((job / "train.json").read_text()) for job in jobs]
    assert not any(s["reused"] for s in summaries)  # each job trained: nothing compared away
    assert summaries[0]["fingerprint"] == summaries[1]["fingerprint"] != summaries[2][
        "fingerprint"]  # two seeds, two models
    models = [torch.load(job / "global.pt", weights_only=True)["final"] for job in jobs]
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert any(not torch.equal(models[0][k], models[2][k]) for k in models[0])


def test_a_terminated_job_stops_its_simulation_superlink_and_ray(fedunlearn_cmd, tmp_path):
    """SIGTERM (a `kill`, a CI timeout) once the clients run: the flwr-run launcher still
    stops every process group below its SuperLink, Ray's workers included."""
    import os
    import signal
    import time

    log = tmp_path / "job.log"
    with log.open("w") as sink:
        job = subprocess.Popen(
            [*fedunlearn_cmd, "train", *FAST, "train.rounds=50", "reuse_trained=false",
             f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}"],
            stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "federation:" not in log.read_text() and time.monotonic() < deadline:
            assert job.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=60) != 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    record = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert len(record["process_groups_stopped"]) >= 2  # the SuperLink and its SuperExec
    assert all(not group_members(pgid) for pgid in record["process_groups_stopped"])
