"""ClientApp handlers called directly with built messages and a real Context."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.app import curvature, delete, sample_ids, train
from client.node import node_view
from fedunlearn import protocol as P
from fedunlearn.config import compose, to_payload
from fedunlearn.federation import build_federation
from fedunlearn.models import seeded_model
from fedunlearn.requests import scenario_request
from fedunlearn.unlearning.curvature import diagonal_curvature

CFG = compose(["dataset=digits", "num_clients=2", "model=cnn_nonorm",
               "unlearn.curvature.estimator=diag_ggn_exact"])
REQUEST = scenario_request({"kind": "instance", "client": 0, "fraction": 0.5, "clients": [0]})


def context(pid=0):
    return Context(run_id=1, node_id=5, node_config={"partition-id": pid},
                   state=RecordDict(), run_config={})


def message(kind, cfg=CFG, **config):
    splits = build_federation(cfg).splits
    model = seeded_model("cnn_nonorm", splits.num_classes, splits.in_shape, 0)
    record = ConfigRecord({P.PAYLOAD: to_payload(cfg), P.REQUEST: REQUEST.to_json(), **config})
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


def test_retained_curvature_from_a_sample_keeps_the_full_count():
    sampled = compose(["dataset=digits", "num_clients=2", "model=cnn_nonorm",
                       "unlearn.curvature.estimator=diag_ggn_exact",
                       "unlearn.curvature.retain_samples=40"])
    msg = message("query.curvature", sampled)
    reply = curvature(msg, context()).content
    full = curvature(message("query.curvature"), context()).content
    # The count weighs this client's h_r on the server (Eq. 30): the full one.
    assert reply.metric_records["metrics"]["n-retain"] == \
        full.metric_records["metrics"]["n-retain"] > 40
    # h_r is the exact diagonal over the seeded sample of 40 retained samples...
    view = node_view(msg, context())
    retain = view.local_data("retain", REQUEST.to_json())
    chosen = retain.subset(sample_ids(len(retain), 40, view.settings.seed + 0))
    model = view.model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    expected = diagonal_curvature(model, chosen.images, chosen.labels,
                                  estimator="diag_ggn_exact", batch_size=64, device="cpu",
                                  seed=0)
    got = reply.array_records["h-retain"].to_torch_state_dict()
    assert all(torch.allclose(got[k], expected[k], rtol=1e-5, atol=1e-12) for k in expected)
    # ... not the one over all of them; the forget part is untouched.
    whole = full.array_records["h-retain"].to_torch_state_dict()
    assert not all(torch.allclose(got[k], whole[k]) for k in whole)
    assert all(torch.equal(v, full.array_records["h-forget"].to_torch_state_dict()[k])
               for k, v in reply.array_records["h-forget"].to_torch_state_dict().items())


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


def receipt_delete(arrays, *, request=REQUEST, cfg=CFG, key=None, model_after=None, **edits):
    """A delete notice for the requesting node: the sealed receipt and the model it names
    (``model_after`` defaults to the digest of ``arrays``; ``edits`` change the receipt
    after sealing)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedunlearn.digest import digest
    from fedunlearn.receipts import seal

    body = {"request": json.loads(request.to_json()), "method": "NoT",
            "model_after": model_after or digest(arrays.to_torch_state_dict())}
    # Without a key: signed by a throwaway one, for nodes that do not check signatures.
    receipt = {**seal(body, key or Ed25519PrivateKey.generate()), **edits}
    record = ConfigRecord({P.PAYLOAD: to_payload(cfg), P.REQUEST: request.to_json(),
                           P.RECEIPT: json.dumps(receipt)})
    return Message(RecordDict({P.ARRAYS: arrays, P.CONFIG: record}),
                   message_type=P.query(P.DELETE), dst_node_id=5)


def model_arrays(seed=0, cfg=CFG):
    splits = build_federation(cfg).splits
    return ArrayRecord(seeded_model("cnn_nonorm", splits.num_classes, splits.in_shape,
                                    seed).state_dict())


def test_delete_checks_the_receipt_and_is_remembered_after_a_restart(tmp_path):
    from fedunlearn.outbox import Outbox
    from fedunlearn.receipts import load_or_create_key, write_public_key

    key = load_or_create_key(tmp_path / "state")
    config = {"partition-id": 0, "outbox": str(tmp_path / "outbox.sqlite"),
              "server-public-key": str(write_public_key(key, tmp_path / "server.pub"))}
    ctx = Context(run_id=1, node_id=5, node_config=config, state=RecordDict(), run_config={})
    msg = receipt_delete(model_arrays(), key=key)
    reply = delete(msg, ctx)
    check = dict(reply.content.metric_records[P.SELF_CHECK])
    fed = build_federation(CFG)
    assert check["model-matches"] == 1 and check["signature-ok"] == 1
    assert check["num-forget"] == round(0.5 * len(fed.train_ids[0]))
    # The received model on this node's forget samples, measured here independently.
    from fedunlearn.training import evaluate as evaluate_model

    model = seeded_model("cnn_nonorm", fed.splits.num_classes, fed.splits.in_shape, 0)
    forget = fed.splits.train.subset(node_view(msg, ctx).forget_ids(REQUEST.to_json()))
    stats = evaluate_model(model, forget.images, forget.labels, batch_size=64, device="cpu")
    assert check["forget-accuracy"] == pytest.approx(100 * stats.accuracy)
    assert check["forget-loss"] == pytest.approx(stats.loss, rel=1e-5)
    # An untrained model has seen neither the forget nor the validation samples.
    assert 30 <= check["mia"] <= 70
    assert "asr" not in check  # not a backdoor request
    with Outbox(config["outbox"]) as box:
        before = [(s.request, s.state, s.receipt, s.self_check) for s in box.status()]
        assert box.deleted() == [REQUEST.to_json()]
    assert before == [(REQUEST, "done", json.loads(msg.content.config_records[P.CONFIG]
                                                   [P.RECEIPT]), check)]
    # Told again (a restarted server, a lost reply): the same reply, nothing changes.
    again = delete(msg, ctx).content.metric_records[P.SELF_CHECK]
    assert dict(again) == check
    with Outbox(config["outbox"]) as box:
        assert [(s.request, s.state, s.receipt, s.self_check) for s in box.status()] == before
        assert box.deleted() == [REQUEST.to_json()]
    # A restarted SuperNode (fresh state, same outbox) never uses those samples again.
    restarted = Context(run_id=2, node_id=5, node_config=config, state=RecordDict(),
                        run_config={})
    view = node_view(message("train"), restarted)
    kept = view.local_data("all")
    assert len(kept) == len(fed.train_ids[0]) - check["num-forget"]
    retained = np.setdiff1d(fed.train_ids[0], view.forget_ids(REQUEST.to_json()))
    assert torch.equal(kept.images, fed.splits.train.subset(retained).images)
    with pytest.raises(RuntimeError, match="already deleted"):
        curvature(message("query.curvature"), restarted)


def test_self_check_flags_another_model_and_an_edited_receipt(tmp_path):
    from fedunlearn.digest import digest
    from fedunlearn.receipts import load_or_create_key, write_public_key

    key = load_or_create_key(tmp_path / "state")
    public = str(write_public_key(key, tmp_path / "server.pub"))
    sent, named = model_arrays(0), model_arrays(1)
    # The receipt names model 1, the server sent model 0: no simulation outbox needed.
    msg = receipt_delete(sent, key=key, model_after=digest(named.to_torch_state_dict()))
    plain = context()
    check = delete(msg, plain).content.metric_records[P.SELF_CHECK]
    assert check["model-matches"] == 0 and "signature-ok" not in check  # no key configured
    assert dict(delete(msg, plain).content.metric_records[P.SELF_CHECK]) == dict(check)
    assert list(node_view(message("train"), plain).deleted) == [REQUEST.to_json()]
    keyed = Context(run_id=1, node_id=5, state=RecordDict(), run_config={},
                    node_config={"partition-id": 0, "server-public-key": public})
    edited = receipt_delete(sent, key=key, method="Retrain")  # edited after sealing
    check = delete(edited, keyed).content.metric_records[P.SELF_CHECK]
    assert check["model-matches"] == 1 and check["signature-ok"] == 0
    # A node told of another client's request only deletes: no receipt, no self-check.
    other = delete(message("query.delete"), context(1)).content
    assert P.SELF_CHECK not in other.metric_records


def test_self_check_of_a_backdoor_request_measures_the_attack():
    cfg = compose(["dataset=digits", "num_clients=2", "model=cnn_nonorm", "attack=backdoor"])
    request = scenario_request({"kind": "backdoor", "client": 0})
    msg = receipt_delete(model_arrays(cfg=cfg), request=request, cfg=cfg)
    check = delete(msg, context()).content.metric_records[P.SELF_CHECK]
    assert check["num-forget"] == len(build_federation(cfg).poisoned[0]) > 0
    assert 0 <= check["asr"] <= 100 and check["model-matches"] == 1


def test_pgd_steps_stay_in_the_ball_around_the_received_model():
    splits = build_federation(CFG).splits
    received = seeded_model("cnn_nonorm", splits.num_classes, splits.in_shape, 7).state_dict()
    random = seeded_model("cnn_nonorm", splits.num_classes, splits.in_shape,
                          CFG.seed).state_dict()
    params = [n for n, _ in seeded_model("cnn_nonorm", splits.num_classes, splits.in_shape,
                                         0).named_parameters()]

    def moved(**order):
        config = ConfigRecord({P.PAYLOAD: to_payload(CFG), P.REQUEST: REQUEST.to_json(),
                               P.MODE: "ascent", P.DATA: "forget", P.LR: 0.5, P.EPOCHS: 3,
                               **order})
        msg = Message(RecordDict({"arrays": ArrayRecord(received), "config": config}),
                      message_type="train", dst_node_id=5)
        out = train(msg, context()).content.array_records["arrays"].to_torch_state_dict()
        return float(torch.sqrt(sum(((out[n] - received[n]) ** 2).sum() for n in params)))

    ball = 0.05 * float(torch.sqrt(sum(((received[n] - random[n]) ** 2).sum()
                                       for n in params)))
    free, projected = moved(), moved(**{P.RADIUS: 0.05})
    assert free > ball  # plain ascent leaves the ball: the projection has work to do
    assert projected <= ball * (1 + 1e-5) and projected > 0.5 * ball


def test_every_reply_says_where_its_time_went_on_the_node():
    from client.app import app

    msg = Message(RecordDict(), message_type="query.nodeinfo", dst_node_id=5)
    reply = app(msg, context())
    timing = reply.content.config_records[P.TIMING]
    assert timing["process-start"] <= timing["handler-start"] <= timing["handler-end"]
    assert reply.content.config_records[P.INFO][P.PARTITION_ID] == 0


def test_a_reply_says_requests_wait_until_a_poll_acknowledges_them(tmp_path):
    from client.app import app
    from fedunlearn.outbox import Outbox

    box = tmp_path / "outbox.sqlite"
    ctx = Context(run_id=1, node_id=5, node_config={"partition-id": 1, "outbox": str(box)},
                  state=RecordDict(), run_config={})
    info = Message(RecordDict(), message_type="query.nodeinfo", dst_node_id=5)
    assert P.PENDING not in app(info, ctx).content.config_records  # nothing waits
    request = scenario_request({"kind": "client", "client": 1})
    with Outbox(box) as outbox:
        outbox.add(request)
        assert outbox.count_unsent() == 1
    assert app(info, ctx).content.config_records[P.PENDING]["count"] == 1
    poll = Message(RecordDict({P.ACK: ConfigRecord({"0": request.request_id})}),
                   message_type="query.requests", dst_node_id=5)
    reply = app(poll, ctx)  # the acknowledging poll: the reply says none wait any more
    assert P.PENDING not in reply.content.config_records
    assert P.PENDING not in app(info, context()).content.config_records  # no outbox at all
