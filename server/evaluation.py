"""What a request is judged on: retained, forget and test data, and the metrics per round.

:class:`UnlearningEvaluator` is a central evaluation in Flower's ``evaluate_fn``
shape: every method's rounds are scored on the same retained, forget and test
samples (and the backdoor trigger, for a backdoor request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord

from fedunlearn.data import ForgetSet, eval_trigger
from fedunlearn.evaluation import evaluate_unlearning
from fedunlearn.federation import Federation
from fedunlearn.settings import Job
from fedunlearn.training import evaluate
from server.central import CentralEvaluator


@dataclass
class EvalSets:
    """The data a request is judged on: retained, forget and test samples.

    ``target_classes`` are the classes the forget set (nearly) owns: a model that
    forgot them well loses them on the test set too, which deflates full-test NTA;
    ``test_other`` is then reported on the remaining classes as well.
    """

    retain_ids: np.ndarray
    forget_ids: np.ndarray
    backdoor: dict[str, Any] | None = None
    target_classes: list[int] = field(default_factory=list)


class UnlearningEvaluator:
    """Retain/forget/test accuracy, MIA (and backdoor metrics) of arrays, per round."""

    def __init__(self, settings: Job, federation: Federation, central: CentralEvaluator,
                 sets: EvalSets) -> None:
        train = federation.splits.train
        self.central = central
        self.retain = train.subset(sets.retain_ids)
        self.forget = train.subset(sets.forget_ids)
        self.test = federation.splits.test
        self.backdoor = sets.backdoor
        self.other = None
        if sets.target_classes:
            keep = ~np.isin(self.test.labels.numpy(), sets.target_classes)
            self.other = self.test.subset(np.flatnonzero(keep))
        self.seed = settings.seed
        self.folds = settings.evaluate.mia_folds
        self.max_retain = settings.evaluate.max_retain

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Every metric of the evaluation module, in percent (Flower's ``evaluate_fn``)."""
        model = self.central.load(arrays)
        metrics = evaluate_unlearning(
            model, retain=self.retain, forget=self.forget, test=self.test,
            batch_size=self.central.batch_size, device=self.central.device, seed=self.seed,
            folds=self.folds, max_retain=self.max_retain, backdoor=self.backdoor,
        )
        if self.other is not None:
            stats = evaluate(model, self.other.images, self.other.labels,
                             batch_size=self.central.batch_size, device=self.central.device)
            metrics["test_other"] = 100.0 * stats.accuracy
        return MetricRecord({k: float(v) for k, v in metrics.items()})


def eval_sets(settings: Job, federation: Federation, forget: ForgetSet) -> EvalSets:
    """Retained ids (all training ids but the forget ones), forget ids, the classes the
    forget set owns, and the backdoor setup."""
    everything = np.concatenate(federation.train_ids)
    forget_ids = forget.all_ids
    labels = federation.splits.train.labels.numpy()
    total = np.bincount(labels[everything], minlength=federation.splits.num_classes)
    held = np.bincount(labels[forget_ids], minlength=federation.splits.num_classes)
    share = settings.evaluate.owned_share
    owned = [c for c in range(len(total)) if total[c] and held[c] >= share * total[c]]
    backdoor = None
    attack = settings.backdoor
    if forget.kind == "backdoor" and attack is not None:
        owned = []  # poisoned samples carry the target label: it is not "owned"
        backdoor = {"target": attack.target,
                    "trigger": eval_trigger(attack.size, attack.corner,
                                            federation.splits.train.images)}
    return EvalSets(np.setdiff1d(everything, forget_ids), forget_ids, backdoor, owned)
