"""Test doubles without a network, shared by every test folder."""

from collections.abc import Callable, Iterable

from flwr.app import Message


class FakeGrid:
    """A Flower Grid without a network: the connected nodes, and replies a test builds.

    Parameters
    ----------
    nodes : iterable of int
        The node ids ``get_node_ids`` returns.
    answer : callable, optional
        Builds the reply to one message (or None: no reply, as from a lost node).
    """

    def __init__(self, nodes: Iterable[int] = (1, 2, 3),
                 answer: Callable[[Message], Message | None] | None = None) -> None:
        self.nodes = list(nodes)
        self.answer = answer
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message],
                         timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
            # What a real grid does when it pushes: the message gets its id.
            msg.metadata.__dict__["_message_id"] = f"message-{len(self.sent)}"
            reply = self.answer(msg) if self.answer else None
            if reply is not None:
                replies.append(reply)
        return replies
