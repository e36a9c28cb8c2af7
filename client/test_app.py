"""ClientApp handlers called directly with built messages and a real Context."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.app import curvature, delete, train
from fedunlearn import protocol as P
from fedunlearn.config import compose, to_payload
from fedunlearn.federation import build_federation
from fedunlearn.models import seeded_model
from fedunlearn.requests import scenario_request

CFG = compose(["dataset=digits", "num_clients=2", "model=cnn_nonorm",
               "unlearn.curvature.estimator=diag_ggn_exact"])
REQUEST = scenario_request({"kind": "instance", "client": 0, "fraction": 0.5, "clients": [0]})


def context(pid=0):
    return Context(run_id=1, node_id=5, node_config={"partition-id": pid},
                   state=RecordDict(), run_config={})


def message(kind, **config):
    splits = build_federation(CFG).splits
    model = seeded_model("cnn_nonorm", splits.num_classes, splits.in_shape, 0)
    record = ConfigRecord({P.PAYLOAD: to_payload(CFG), P.REQUEST: REQUEST.to_json(), **config})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": record}),
                   message_type=kind, dst_node_id=5)


def test_curvature_counts_and_shapes_then_refusal_after_deletion():
    ctx = context()
    reply = curvature(message("query.curvature"), ctx)
    metrics = reply.content.metric_records["metrics"]
    fed = build_federation(CFG)
    assert metrics["n-forget"] + metrics["n-retain"] == len(fed.train_ids[0])
    assert metrics["n-forget"] == round(0.5 * len(fed.train_ids[0]))
    h = reply.content.array_records["h-forget"].to_torch_state_dict()
    splits = fed.splits
    shapes = {k: v.shape for k, v in
              seeded_model("cnn_nonorm", splits.num_classes, splits.in_shape, 0).named_parameters()}
    assert {k: v.shape for k, v in h.items()} == shapes
    assert all(bool((v >= 0).all()) for v in h.values())  # a GGN diagonal
    assert metrics["flops"] > 0
    delete(message("query.delete"), ctx)
    with pytest.raises(RuntimeError, match="already deleted"):
        curvature(message("query.curvature"), ctx)
    # Another node has deleted nothing and still answers: it holds no forget samples
    # of client 0's request, only retained ones.
    other = curvature(message("query.curvature"), context(1)).content
    assert other.metric_records["metrics"]["n-forget"] == 0
    assert other.metric_records["metrics"]["n-retain"] == len(fed.train_ids[1])
    assert "h-forget" not in other.array_records


def test_trim_mask_keeps_frozen_entries_on_the_client():
    msg = message("train", data="retain", mode="descent")
    arrays = msg.content.array_records["arrays"]
    mask = {k: torch.zeros(v.shape, dtype=torch.uint8) for k, v
            in arrays.to_torch_state_dict().items()}
    first = next(iter(mask))
    mask[first].view(-1)[:3] = 1  # only three entries of the first tensor may train
    msg.content["mask"] = ArrayRecord(mask)
    reply = train(msg, context())
    before = arrays.to_torch_state_dict()
    after = reply.content.array_records["arrays"].to_torch_state_dict()
    for name in before:
        frozen = ~mask[name].bool()
        assert torch.equal(after[name][frozen], before[name][frozen])
    assert not np.allclose(after[first].view(-1)[:3].numpy(), before[first].view(-1)[:3].numpy())


def test_validation_leaves_a_forgotten_class_out():
    from client.app import evaluate

    plain = evaluate(message("evaluate"), context()).content.metric_records[P.METRICS]
    forgetting = scenario_request({"kind": "class", "client": 0, "cls": 3})
    msg = message("evaluate")
    msg.content.config_records["config"][P.REQUEST] = forgetting.to_json()
    left = evaluate(msg, context()).content.metric_records[P.METRICS]
    val = build_federation(CFG).client_val(0)
    assert plain[P.NUM_EXAMPLES] == len(val)
    assert left[P.NUM_EXAMPLES] == int((val.labels != 3).sum())
