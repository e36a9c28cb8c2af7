"""Fixtures for server tests fed with built replies (no network)."""

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def server_identity():
    """Messages need a run and node identity; pose as the server of run 1."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
