"""Server-side strategies: one small class per idea, on Flower's Message API."""

from strategies.fedavg import FederatedAveraging

__all__ = ["FederatedAveraging"]
