"""Centralized evaluation of the global model on the server's test set."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, MetricRecord

from fedunlearn.federation import Federation
from fedunlearn.settings import Job
from fedunlearn.training import evaluate


class CentralEvaluator:
    """Evaluates arrays on the test set, reusing one model instance across rounds."""

    def __init__(self, settings: Job, federation: Federation) -> None:
        self.device = settings.torch_device()
        self.model = settings.build_model(federation).to(self.device)
        self.test = federation.splits.test
        self.batch_size = settings.train.eval_batch_size

    def load(self, arrays: ArrayRecord | dict[str, torch.Tensor]) -> torch.nn.Module:
        """Put ``arrays`` into the evaluation model and return it."""
        state = arrays.to_torch_state_dict() if isinstance(arrays, ArrayRecord) else arrays
        self.model.load_state_dict(state)
        return self.model

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Test accuracy (fraction) and mean loss of ``arrays`` (Flower's ``evaluate_fn``)."""
        stats = evaluate(self.load(arrays), self.test.images, self.test.labels,
                         batch_size=self.batch_size, device=self.device)
        return MetricRecord({"test_accuracy": stats.accuracy, "test_loss": stats.loss})
