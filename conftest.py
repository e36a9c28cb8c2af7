"""Fixtures shared by every test folder: a node identity and a grid without a network.

Tests of strategies, the server's steps and the ClientApp handlers are fed with
built messages and replies; they need Flower's task identity set (messages carry
a run and a node) and, for server steps, a :class:`~tests.fakes.FakeGrid`.
"""

import pytest
from flwr.supercore.task_identity import TaskIdentity

from tests.fakes import FakeGrid


@pytest.fixture(autouse=True)
def identity():
    """Messages need a run and node identity; pose as the server of run 1."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


@pytest.fixture
def fake_grid() -> type[FakeGrid]:
    """The :class:`~tests.fakes.FakeGrid` class (one definition for every test folder)."""
    return FakeGrid
