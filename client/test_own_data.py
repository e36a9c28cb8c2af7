"""A node with its own files (node config ``data-dir``): the ClientApp handlers, called
with built messages and a real Context, train, evaluate, forget and delete on the
node's own samples, written as real PNGs in an ImageFolder."""

import json

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.app import delete, evaluate, nodeinfo, train
from client.node import node_view
from fedunlearn import protocol as P
from fedunlearn.config import compose, to_payload
from fedunlearn.data.nodefiles import NodeDataError, node_split, read_node_files
from fedunlearn.digest import digest
from fedunlearn.federation import build_federation
from fedunlearn.models import seeded_model
from fedunlearn.receipts import seal
from fedunlearn.requests import RequestRefused, scenario_request
from tests.imagefiles import write_image_folder

CFG = compose(["dataset=digits", "num_clients=2", "model=cnn_nonorm"])
# digits' normalization (the run's data set), of pixels scaled to [0, 1]
MEAN, STD = 0.3053, 0.3760


@pytest.fixture
def own(tmp_path):
    """A node's folder: classes 0, 4 and 7, ten 8 x 8 PNGs each (24 train, 6 val),
    with the pixels written per file."""
    root = tmp_path / "data"
    written = write_image_folder(root, {"0": 10, "4": 10, "7": 10})
    return root, written


def context(root, pid=0):
    return Context(run_id=1, node_id=5, node_config={"partition-id": pid, "data-dir": str(root)},
                   state=RecordDict(), run_config={})


def model_arrays():
    splits = build_federation(CFG).splits
    return ArrayRecord(seeded_model("cnn_nonorm", splits.num_classes, splits.in_shape,
                                    0).state_dict())


def message(kind, request=None, arrays=None, **config):
    record = ConfigRecord({P.PAYLOAD: to_payload(CFG), **config})
    if request is not None:
        record[P.REQUEST] = request.to_json()
    return Message(RecordDict({P.ARRAYS: arrays or model_arrays(), P.CONFIG: record}),
                   message_type=kind, dst_node_id=5)


def examples(reply):
    return reply.content.metric_records[P.METRICS][P.NUM_EXAMPLES]


def own_ids(root, cls):
    """The node's training ids of class ``cls``, and their files."""
    files = read_node_files(root)
    train_ids = node_split(files).train_ids
    ids = train_ids[files.labels[train_ids] == cls]
    return ids, [files.files[i] for i in ids]


def test_nodeinfo_and_training_count_the_own_train_split(own):
    root, _ = own
    info = nodeinfo(message(P.query(P.NODEINFO)), context(root)).content.config_records[P.INFO]
    assert info[P.NUM_TRAIN_EXAMPLES] == 24
    assert examples(train(message("train"), context(root))) == 24
    assert len(build_federation(CFG).train_ids[0]) != 24  # not the demo partition
    assert examples(evaluate(message("evaluate"), context(root))) == 6


def test_a_class_request_forgets_the_nodes_own_samples_of_the_class(own):
    root, written = own
    # Client 1 asks: a class-wise request forgets the class on every node.
    request = scenario_request({"kind": "class", "client": 1, "cls": 4})
    ids, names = own_ids(root, 4)
    assert len(ids) > 0
    forget = node_view(message("train"), context(root)).local_data("forget", request.to_json())
    expected = (np.stack([written[n] for n in names])[:, None] / 255.0 - MEAN) / STD
    assert np.allclose(forget.images.numpy(), expected, atol=1e-5)
    assert forget.labels.tolist() == [4] * len(ids)
    ascent = message("train", request, **{P.DATA: "forget", P.MODE: "ascent"})
    assert examples(train(ascent, context(root))) == len(ids)
    # Deleted: never trained on again by this node.
    ctx = context(root)
    delete(message(P.query(P.DELETE), request), ctx)
    assert examples(train(message("train"), ctx)) == 24 - len(ids)
    kept = node_view(message("train"), ctx).local_data("all")
    assert 4 not in kept.labels.tolist()


def test_an_instance_request_names_own_ids_and_the_self_check_uses_them(own):
    root, _ = own
    ids, _ = own_ids(root, 7)
    request = scenario_request({"kind": "instance", "client": 0, "ids": ids[:3].tolist()})
    arrays = model_arrays()
    body = {"request": json.loads(request.to_json()), "method": "NoT",
            "model_after": digest(arrays.to_torch_state_dict())}
    receipt = json.dumps(seal(body, Ed25519PrivateKey.generate()))
    notice = message(P.query(P.DELETE), request, arrays, **{P.RECEIPT: receipt})
    ctx = context(root)
    check = delete(notice, ctx).content.metric_records[P.SELF_CHECK]
    assert check["num-forget"] == 3 and check["model-matches"] == 1
    assert examples(train(message("train"), ctx)) == 21
    # Node 1 holds other samples under the same ids: client 0's request is not about them.
    other = node_view(message("train"), context(root, pid=1))
    assert len(other.local_data("forget", request.to_json())) == 0


def test_a_nodes_own_request_for_validation_ids_or_a_backdoor_is_refused(own):
    root, _ = own
    val_id = int(node_split(read_node_files(root)).val_ids[0])
    view = node_view(message("train"), context(root))
    for content in ({"kind": "instance", "client": 0, "ids": [val_id]},
                    {"kind": "backdoor", "client": 0}):
        with pytest.raises(RequestRefused):
            view.local_data("forget", scenario_request(content).to_json())


def test_a_malformed_folder_is_refused_by_the_first_message(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, {"0": 2})
    write_image_folder(root, {"1": 2}, size=(9, 9))
    bare = Message(RecordDict(), message_type=P.query(P.NODEINFO), dst_node_id=5)
    with pytest.raises(NodeDataError, match="mixed sizes") as excinfo:
        nodeinfo(bare, context(root))
    assert "\n" not in str(excinfo.value)
    # A well-formed folder that does not fit the run: refused once the config comes.
    wrong = tmp_path / "wide"
    write_image_folder(wrong, {"0": 3}, size=(28, 28))
    nodeinfo(bare, context(wrong))  # its format is fine
    with pytest.raises(NodeDataError, match="1x28x28 but the run's model takes 1x8x8"):
        nodeinfo(message(P.query(P.NODEINFO)), context(wrong))


def test_without_a_data_dir_the_partition_is_used():
    ctx = Context(run_id=1, node_id=5, node_config={"partition-id": 0}, state=RecordDict(),
                  run_config={})
    view = node_view(message("train"), ctx)
    fed = build_federation(CFG)
    assert view.own is None and np.array_equal(view.train_ids, fed.train_ids[0])
    assert torch.equal(view.validation().images, fed.client_val(0).images)
