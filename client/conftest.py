"""Fixtures for ClientApp handler tests: real handlers, built messages and contexts."""

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def identity():
    """Messages need a run and node identity; pose as the server of run 1."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
