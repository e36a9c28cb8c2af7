"""A node's own check of a receipt: does the model it names forget this node's samples?

The server's receipt carries its metrics, measured on its data; the requesting node
holds the samples it asked to forget and checks the adopted model on them itself,
before it deletes them: accuracy and loss on its forget samples, a membership
inference of them against its own validation split, the backdoor's attack success
rate for a backdoor request, whether the model is the one the receipt names and,
with the server's public key, whether the server signed the receipt.

Every number is in the keys of the delete reply's ``self-check`` MetricRecord;
accuracies and scores are in percent, like the receipt's metrics.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from client.node import NodeView
from fedunlearn.data import eval_trigger
from fedunlearn.digest import digest
from fedunlearn.evaluation import accuracy, backdoor_metrics, mia_attack, sample_features
from fedunlearn.receipts import ReceiptInvalid, load_public_key, verify
from fedunlearn.requests import ForgetRequest
from fedunlearn.training import predict_logits

__all__ = ["self_check"]


def self_check(view: NodeView, request_json: str, receipt: dict[str, Any],
               arrays: ArrayRecord, public_key: str | Path | None = None) -> dict[str, float]:
    """Check a receipt and the model it names on this node's own data.

    Parameters
    ----------
    view : NodeView
        This node, still holding the forget samples of ``request_json``.
    request_json : str
        The answered request.
    receipt : dict
        The server's sealed receipt; ``model_after`` is the digest of the model it names.
    arrays : ArrayRecord
        The model the server sent with the receipt.
    public_key : str or Path, optional
        The server's public key (PEM); without it the signature is not checked.

    Returns
    -------
    dict of str to float
        ``num-forget`` (count of this node's forget samples), ``model-matches`` (1 when
        the arrays' digest is the receipt's ``model_after``, else 0); with forget
        samples ``forget-accuracy`` and ``forget-loss`` (mean cross-entropy), and ``mia``
        (:func:`~fedunlearn.evaluation.mia.mia_attack`: forget samples against the
        node's validation split, 50 = cannot tell them apart) unless too few samples
        make it NaN (then left out: a stored self-check is standard JSON); ``asr`` for
        a backdoor request; ``signature-ok`` (1/0) with ``public_key``.

    Raises
    ------
    ReceiptInvalid
        ``public_key`` cannot be read (a node misconfiguration, not a bad receipt).
    """
    state = arrays.to_torch_state_dict()
    check: dict[str, float] = {
        "model-matches": int(digest(state) == receipt.get("model_after")),
    }
    if public_key is not None:
        check["signature-ok"] = int(_signed(receipt, public_key))
    model = view.model()
    model.load_state_dict(state)
    forget = view.local_data("forget", request_json)
    check["num-forget"] = len(forget)
    batch = view.settings.train.eval_batch_size
    if len(forget):
        logits = predict_logits(model, forget.images, batch_size=batch, device=view.device)
        features = sample_features(logits, forget.labels)
        check["forget-accuracy"] = accuracy(logits, forget.labels)
        check["forget-loss"] = float(features[:, 0].mean())  # column 0: per-sample loss
        val = view.validation()
        if len(val):
            val_logits = predict_logits(model, val.images, batch_size=batch, device=view.device)
            mia = mia_attack(features, sample_features(val_logits, val.labels),
                             folds=view.settings.evaluate.mia_folds, seed=view.settings.seed)
            if not math.isnan(mia):
                check["mia"] = mia
    if ForgetRequest.from_json(request_json).kind == "backdoor":
        asr = _attack_success(view, model)
        if asr is not None:
            check["asr"] = asr
    return check


def _signed(receipt: dict[str, Any], public_key: str | Path) -> bool:
    key = load_public_key(public_key)  # unreadable: raises, a misconfigured node
    try:
        verify(receipt, key)
    except ReceiptInvalid:
        return False
    return True


def _attack_success(view: NodeView, model: torch.nn.Module) -> float | None:
    """Percent of this node's triggered validation images the model sends to the
    backdoor's target; None when the run has no backdoor or no non-target image."""
    attack = view.settings.backdoor
    val = view.validation()
    if attack is None or not bool((val.labels != attack.target).any()):
        return None
    metrics = backdoor_metrics(
        model, val.images, val.labels, target=attack.target,
        trigger=eval_trigger(attack.size, attack.corner, view.federation.splits.train.images),
        batch_size=view.settings.train.eval_batch_size, device=view.device)
    return metrics["asr"]
