"""TIS through the whole flow in simulation: curvature query, reset, TRIM, metrics."""

import json
import subprocess

import pytest
import torch

pytestmark = pytest.mark.integration


def test_tis_and_random_reset_with_trim(fedunlearn_cmd, tmp_path):
    done = subprocess.run(
        [*fedunlearn_cmd, "run", "dataset=digits", "num_clients=3", "partition=preferential",
         "model=cnn_nonorm", "train.rounds=3", "runtime.num_cpus=2",
         "runtime.launch=in-process",  # the method is under test, not the launcher
         "unlearn.methods=[Retrain,TIS,RandomReset]", "unlearn.retrain_rounds=3",
         "unlearn.tis.gammas=[0.5,0.9]", "unlearn.tis.trim_rounds=1",
         "unlearn.curvature.estimator=diag_ggn_exact", f"cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for name in ("TIS@0.5", "TIS@0.9", "RandomReset@0.5", "RandomReset@0.9"):
        row = rows[name]
        assert 0 < row["reset_fraction"] < 1 and row["rounds"] == 1  # one TRIM round
        assert row["bytes"] > 0 and row["flops"] > 0  # curvature and TRIM are costed
        for key in ("nta", "nfs", "nfs_mia", "rtr"):
            assert key in row
    # Random Reset resets as many entries as TIS at the same gamma.
    assert rows["TIS@0.9"]["reset_fraction"] == rows["RandomReset@0.9"]["reset_fraction"]
    assert rows["TIS@0.9"]["reset_fraction"] > rows["TIS@0.5"]["reset_fraction"]
    # TRIM: entries outside the reset mask are bit-identical to the trained model.
    trained = torch.load(out / "global.pt", weights_only=True)["final"]
    request = next((out / "unlearned").iterdir())
    after = torch.load(request / "TIS@0.5.pt", weights_only=True)
    changed = sum(int((after[k] != trained[k]).sum()) for k in trained)
    total = sum(v.numel() for v in trained.values())
    assert 0 < changed <= rows["TIS@0.5"]["reset_fraction"] * total + 0.5
