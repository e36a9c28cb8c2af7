"""The wire protocol between the server and the nodes, named once.

Both sides import these names: the message types a node answers, the keys of
the records a message carries, and the keys of a training order. Nothing else
in the project spells a message type or a record key as a string literal.

A training message (Flower's ``train`` type) carries the global model under
:data:`ARRAYS`, a ConfigRecord under :data:`CONFIG` with the run's composed
config as JSON under :data:`PAYLOAD` plus the order (:data:`ORDER_KEYS`), and
any further ArrayRecords a method needs (TRIM's :data:`MASK`). Its reply holds
the trained model under :data:`ARRAYS` and a MetricRecord under :data:`METRICS`
whose :data:`NUM_EXAMPLES` weighs it.
"""

from __future__ import annotations

# ---- message types (Flower routes "query.NAME" to @app.query("NAME")) ----------
NODEINFO = "nodeinfo"
REQUESTS = "requests"
CURVATURE = "curvature"
DELETE = "delete"


def query(name: str) -> str:
    """The message type of the query handled by ``@app.query(name)``."""
    return f"query.{name}"


# ---- record keys -----------------------------------------------------------------
ARRAYS = "arrays"    # ArrayRecord: model weights (to a node and back)
CONFIG = "config"    # ConfigRecord: payload, order, request
METRICS = "metrics"  # MetricRecord of a reply
MASK = "mask"        # ArrayRecord: uint8 per parameter, 1 where training may change it
INFO = "info"        # ConfigRecord of a nodeinfo reply
FOUND = "requests"   # ConfigRecord of a requests reply: key -> request JSON
ACK = "ack"          # ConfigRecord of a requests poll: keys the ledger now holds
DELETED = "deleted"  # ConfigRecord in a node's state: requests whose data it deleted
SELF_CHECK = "self-check"  # MetricRecord of a delete reply: the node's check of a receipt
TIMING = "timing"    # ConfigRecord of every reply: when its process started, the handler ran
PENDING = "pending"  # ConfigRecord of a reply: {"count": requests the node holds unsent}


def curvature_key(part: str) -> str:
    """ArrayRecord key of a curvature reply's diagonal for ``part`` (forget or retain)."""
    return f"h-{part}"


# ---- ConfigRecord entries ----------------------------------------------------------
PAYLOAD = "fedunlearn"  # the composed config as JSON (the server is its only source)
PHASE = "phase"
SERVER_ROUND = "server-round"
REQUEST = "request"     # the request as JSON: each node finds its own forget samples
RECEIPT = "receipt"     # a delete notice's sealed receipt (JSON), to the requesting node
# A training order: which data (all, retain, forget), which client behaviour (a mode
# of client/modes.py), its learning rate, local epochs and gradient clip.
DATA, MODE, LR, EPOCHS, GRAD_CLIP = "data", "mode", "lr", "epochs", "grad-clip"
# PGD: keep the trained model within this share of the distance between the received
# model and a random one (0: unconstrained).
RADIUS = "radius"
ORDER_KEYS = (DATA, MODE, LR, EPOCHS, GRAD_CLIP, REQUEST, RADIUS)
DATA_SELECTIONS = ("all", "retain", "forget")

# ---- nodeinfo entries --------------------------------------------------------------
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NUM_TRAIN_EXAMPLES = "num-train-examples"
OWN_DATA = "own-data"  # nodeinfo: 1 when the node trains on its own files (node config data-dir)
DEVICE = "device"

# ---- metrics -------------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"
FLOPS = "flops"
BYTES_RECEIVED = "bytes-received"
BYTES_SENT = "bytes-sent"
TRAIN_SECONDS = "train-seconds"
# Extensive metrics: their federation total is the sum, not a weighted mean.
SUMMED_METRICS = (NUM_EXAMPLES, FLOPS, BYTES_RECEIVED, BYTES_SENT, TRAIN_SECONDS)


def count_key(part: str) -> str:
    """MetricRecord key of a curvature reply's sample count for ``part``."""
    return f"n-{part}"

# In the results folder: the ServerApp's job returned or raised (JSON: run_id, ok, error).
DONE_FILE = "serverapp.done"
