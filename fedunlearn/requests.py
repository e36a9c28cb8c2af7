"""Forget requests: what a "forget me" request says, its wire form, and its forget set.

A :class:`ForgetRequest` names *what* to forget (a client's data, a class, some
samples, a client's poisoned samples) without carrying any data: every party
derives the same partitions from the config (:mod:`fedunlearn.federation`), so
:func:`materialize` turns a request into a :class:`~fedunlearn.data.ForgetSet`
on the server with the builders of :mod:`fedunlearn.data.forget`.

Requests come from two places: the experiment's scenario (``conf/scenario``)
and a client's own ``fedunlearn forget`` command. Either way the id is a random
128-bit :func:`new_request_id` made where the request is made, so nobody can
compute (and so pre-empt or cancel) someone else's request id. The ledger
recognises a re-submitted scenario request by its :meth:`ForgetRequest.content`.

Every integer is bounded to SQLite's signed 64-bit range, so no request can
overflow the ledger or numpy.

Anything malformed or impossible raises :class:`RequestRefused` with a one-line
reason, which the server records in its ledger and reports back.

Why one module of ~400 lines: the request type, its strict wire form and its one
materialization must agree field by field; splitting them would split that contract.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedunlearn.errors import UserError

if TYPE_CHECKING:  # the data layer imports torch: keep `fedunlearn forget` light
    from fedunlearn.data.forget import ForgetSet

__all__ = [
    "CONTENT_FIELDS",
    "KINDS",
    "ORIGINS",
    "ForgetRequest",
    "RequestRefused",
    "materialize",
    "materialize_all",
    "parse_requests",
    "requests_json",
    "new_request_id",
    "scenario_request",
]

# The request kinds; fedunlearn.data.forget.KINDS is the same tuple (checked by a test),
# kept here too so that parsing a request never imports the data layer (and torch).
KINDS: tuple[str, ...] = ("client", "class", "instance", "backdoor")
# Every integer of a request fits SQLite's INTEGER and numpy's int64.
INT_MAX = 2**63 - 1
ORIGINS: tuple[str, ...] = ("scenario", "client")
# The fields that say what is forgotten; two requests with equal content forget the same.
CONTENT_FIELDS: tuple[str, ...] = ("kind", "client", "cls", "ids", "fraction", "clients", "seed")
# Fields a serialized request must carry; the others default as in ForgetRequest.
_REQUIRED_JSON: tuple[str, ...] = ("request_id", "kind", "client", "created", "origin")


class RequestRefused(UserError):
    """A request that is malformed or cannot be carried out; the message is one line."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_request_id() -> str:
    """A fresh random request id (uuid4: 122 random bits, 32 hex digits)."""
    return uuid.uuid4().hex


def _int(name: str, value: object, *, minimum: int | None = 0) -> int:
    # bool is an Integral too, but True as a client id is a type error, not client 1.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise RequestRefused(f"{name} must be an integer, got {_short(value)}")
    low = -INT_MAX - 1 if minimum is None else minimum
    if not low <= value <= INT_MAX:
        raise RequestRefused(f"{name} must be in [{low}, 2^63 - 1], got {_short(value)}")
    return int(value)


def _short(value: object, limit: int = 40) -> str:
    """``repr`` cut to ``limit`` characters: a refusal names a value, it does not echo it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_tuple(name: str, value: object) -> tuple[int, ...] | None:
    """Sorted, de-duplicated non-negative ints, so equal requests compare and hash equal."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise RequestRefused(f"{name} must be a list of integers, got {_short(value)}")
    items = sorted({_int(f"{name} entry", item) for item in value})
    if not items:
        raise RequestRefused(f"{name} is empty; give at least one")
    return tuple(items)


def _fraction(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise RequestRefused(f"fraction must be a number, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise RequestRefused(f"fraction must be in (0, 1], got {_short(value)}") from None
    if not 0.0 < number <= 1.0:
        raise RequestRefused(f"fraction must be in (0, 1], got {value}")
    return float(value)


def _shape_error(request: ForgetRequest) -> str | None:
    """Why the kind-specific arguments do not fit the kind, or None when they do."""
    kind = request.kind
    given = {
        "class": request.cls is not None,
        "ids": request.ids is not None,
        "fraction": request.fraction is not None,
        "clients": request.clients is not None,
    }
    needed = {"client": (), "backdoor": (), "class": ("class",)}.get(kind)
    if needed is not None:  # kinds with a fixed set of arguments
        for name in needed:
            if not given[name]:
                return f"a {kind} request needs a {name}"
        extra = [name for name, present in given.items() if present and name not in needed]
        return f"a {kind} request takes no {extra[0]}" if extra else None
    # instance: exactly one of ids and fraction; clients only with a fraction.
    if given["class"]:
        return "an instance request takes no class"
    if given["ids"] == given["fraction"]:
        return "an instance request needs either ids or a fraction, not both or neither"
    if given["clients"] and not given["fraction"]:
        return "an instance request takes clients only with a fraction"
    if request.origin == "client" and given["fraction"] and request.clients != (request.client,):
        # A client may forget only its own samples: its fraction applies to itself.
        return (
            f"a client-made instance request may draw only from its own samples "
            f"(clients must be [{request.client}])"
        )
    return None


@dataclass(frozen=True)
class ForgetRequest:
    """A request to forget data, as recorded by the server and the clients.

    Construction validates types and the kind-specific arguments and normalizes
    ``ids`` and ``clients`` to sorted tuples without duplicates; invalid input
    raises :class:`RequestRefused`.

    Attributes
    ----------
    request_id : str
        Unique random id (:func:`new_request_id`), at most 64 characters.
    kind : str
        One of :data:`KINDS`.
    client : int
        Partition id of the requesting client.
    cls : int or None
        ``kind == "class"``: the class to forget, on every client.
    ids : tuple of int or None
        ``kind == "instance"``: explicit sample ids, all held by ``client``.
    fraction : float or None
        ``kind == "instance"``: share in ``(0, 1]`` of each of ``clients``'s samples.
    clients : tuple of int or None
        With ``fraction``: the clients to draw from; None means every client.
    seed : int
        Seed of the fraction draw.
    created : str
        ISO-8601 time the request was made.
    origin : str
        ``"scenario"`` or ``"client"`` (one of :data:`ORIGINS`).
    """

    request_id: str
    kind: str
    client: int
    cls: int | None = None
    ids: tuple[int, ...] | None = None
    fraction: float | None = None
    clients: tuple[int, ...] | None = None
    seed: int = 0
    created: str = field(default_factory=_now)
    origin: str = "scenario"

    def __post_init__(self) -> None:
        if (not isinstance(self.request_id, str) or not self.request_id.strip()
                or len(self.request_id) > 64 or not self.request_id.isprintable()):
            raise RequestRefused(f"request_id must be a printable string of 1 to 64 "
                                 f"characters, got {_short(self.request_id)}")
        if self.kind not in KINDS:
            raise RequestRefused(f"unknown request kind {_short(self.kind)}; "
                                 f"known: {', '.join(KINDS)}")
        if self.origin not in ORIGINS:
            raise RequestRefused(f"unknown origin {_short(self.origin)}; "
                                 f"known: {', '.join(ORIGINS)}")
        if not isinstance(self.created, str):
            raise RequestRefused(f"created must be an ISO time string, got "
                                 f"{_short(self.created)}")
        try:
            datetime.fromisoformat(self.created)
        except ValueError:
            raise RequestRefused(f"created is not an ISO time: {_short(self.created)}") from None
        # Frozen: normalized values go in through object.__setattr__.
        normalized = {
            "client": _int("client", self.client),
            "cls": None if self.cls is None else _int("class", self.cls),
            "ids": _int_tuple("ids", self.ids),
            "fraction": _fraction(self.fraction),
            "clients": _int_tuple("clients", self.clients),
            "seed": _int("seed", self.seed, minimum=None),
        }
        for name, value in normalized.items():
            object.__setattr__(self, name, value)
        reason = _shape_error(self)
        if reason:
            raise RequestRefused(reason)

    def content(self) -> dict[str, Any]:
        """The fields that say what is forgotten (:data:`CONTENT_FIELDS`), JSON-ready."""
        data = asdict(self)
        return {name: _jsonable(data[name]) for name in CONTENT_FIELDS}

    def to_json(self) -> str:
        """One-line JSON object with every field, keys sorted."""
        return json.dumps({k: _jsonable(v) for k, v in asdict(self).items()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ForgetRequest:
        """Parse and validate :meth:`to_json`'s output.

        Parameters
        ----------
        text : str or bytes
            A JSON object with at least ``request_id``, ``kind``, ``client``,
            ``created`` and ``origin``; other fields default.

        Raises
        ------
        RequestRefused
            Not JSON, not an object, missing or unknown fields, wrong types or values.
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # ValueError covers Python's limit on digits of a JSON integer too.
            raise RequestRefused(f"request is not valid JSON: {_short(str(exc), 80)}") from None
        if not isinstance(data, dict):
            raise RequestRefused(f"request must be a JSON object, got {type(data).__name__}")
        missing = [name for name in _REQUIRED_JSON if name not in data]
        if missing:
            raise RequestRefused(f"request lacks field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:  # names cut: a hostile body may carry thousands
            names = ", ".join(unknown)
            raise RequestRefused(f"request has unknown field(s): {names[:80]}")
        return cls(**data)


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def scenario_request(content: Mapping[str, Any], created: str | None = None) -> ForgetRequest:
    """A request of the experiment's scenario, with a fresh random id.

    The ledger recognises a scenario request it already holds by its content
    (:meth:`ForgetRequest.content`), so a restarted server does not add it twice.

    Parameters
    ----------
    content : mapping
        Some of :data:`CONTENT_FIELDS`, e.g. ``cfg.scenario.request`` as a dict.
    created : str, optional
        ISO time; default now.

    Raises
    ------
    RequestRefused
        Unknown fields, or content that is not a valid request.
    """
    unknown = sorted(set(content) - set(CONTENT_FIELDS))
    if unknown:
        raise RequestRefused(f"request content has unknown field(s): {', '.join(unknown)}")
    extra = {} if created is None else {"created": created}
    return ForgetRequest(request_id=new_request_id(), origin="scenario", **dict(content), **extra)


def _not_held(ids: npt.ArrayLike, held: np.ndarray, client: int) -> None:
    """Refuse ids that ``client`` does not hold: a client forgets only its own samples."""
    foreign = np.setdiff1d(np.asarray(ids, dtype=np.int64), held)
    if foreign.size:
        shown = ", ".join(str(i) for i in foreign[:5]) + (", ..." if foreign.size > 5 else "")
        raise RequestRefused(f"{foreign.size} ids are not held by client {client}: {shown}")


def materialize(
    request: ForgetRequest,
    partitions: Sequence[np.ndarray],
    labels: npt.ArrayLike,
    poisoned: Mapping[int, np.ndarray],
) -> ForgetSet:
    """The forget set of a request on this federation's data.

    Who may ask for what: a client-wise, instance-wise or backdoor request
    concerns the requester's own samples only (explicit ids must all be held by
    ``request.client``). A class-wise request forgets the class on *every*
    client that holds it, as in the class-wise setting of the NoT and TIS
    papers, whichever client asks. A scenario's instance request with a
    fraction draws from ``request.clients`` (every client when None).

    Parameters
    ----------
    request : ForgetRequest
        A validated request.
    partitions : sequence of numpy.ndarray
        Sample ids per client that forget sets are drawn from (the clients'
        training ids: only samples the model learned from can be forgotten).
    labels : array_like of int
        Label of every training sample as the clients train on it (poisoned
        rows carry the attack's target, which becomes the forget set's target).
    poisoned : mapping of int to numpy.ndarray
        Per attacking client, its poisoned sample ids (``Federation.poisoned``).

    Returns
    -------
    ForgetSet
        Built with :func:`~fedunlearn.data.client_wise`,
        :func:`~fedunlearn.data.class_wise` or :func:`~fedunlearn.data.instance_wise`.

    Raises
    ------
    RequestRefused
        Unknown client, unknown or absent class, ids not held by the requester,
        no poisoned samples, an empty forget set, or one that would forget
        every sample of the federation; the message is one line.
    """
    try:
        return _materialize(request, partitions, np.asarray(labels), poisoned)
    except RequestRefused:
        raise
    except (ValueError, IndexError, OverflowError) as exc:  # the builders' refusals
        raise RequestRefused(str(exc).splitlines()[0]) from exc


def requests_json(requests: Sequence[ForgetRequest]) -> str:
    """What a node message carries as ``request``: one request's JSON object, or for a
    pass over several requests at once a JSON list of them."""
    if len(requests) == 1:
        return requests[0].to_json()
    return "[" + ", ".join(r.to_json() for r in requests) + "]"


def parse_requests(text: str) -> list[ForgetRequest]:
    """The requests of :func:`requests_json`'s output (an object or a list of them).

    Raises
    ------
    RequestRefused
        Not JSON, an empty list, or any element :meth:`ForgetRequest.from_json` refuses.
    """
    stripped = text.lstrip()
    if not stripped.startswith("["):
        return [ForgetRequest.from_json(text)]
    try:
        items = json.loads(stripped)
    except (ValueError, RecursionError) as exc:
        raise RequestRefused(f"request list is not valid JSON: {_short(str(exc), 80)}") from None
    if not items:
        raise RequestRefused("request list is empty")
    return [ForgetRequest.from_json(json.dumps(item)) for item in items]


def materialize_all(
    requests: Sequence[ForgetRequest],
    partitions: Sequence[np.ndarray],
    labels: npt.ArrayLike,
    poisoned: Mapping[int, np.ndarray],
) -> ForgetSet:
    """The union of the requests' forget sets (:func:`materialize` each, then
    :func:`fedunlearn.data.forget.union`): what one pass over them forgets."""
    from fedunlearn.data.forget import union

    return union([materialize(r, partitions, labels, poisoned) for r in requests])


def _materialize(
    request: ForgetRequest,
    partitions: Sequence[np.ndarray],
    labels: np.ndarray,
    poisoned: Mapping[int, np.ndarray],
) -> ForgetSet:
    from fedunlearn.data.forget import (
        ForgetSet,
        _check_client,
        class_wise,
        client_wise,
        instance_wise,
    )

    client = request.client
    _check_client(partitions, client)
    if request.kind == "client":
        return client_wise(partitions, client)
    if request.kind == "class":
        assert request.cls is not None  # guaranteed by ForgetRequest's shape check
        classes = np.unique(labels)
        if request.cls not in set(classes.tolist()):
            raise RequestRefused(
                f"class {request.cls} is unknown; the labels hold classes "
                f"{classes.min()}..{classes.max()}"
            )
        return class_wise(partitions, labels, request.cls)
    if request.kind == "instance":
        if request.ids is not None:
            _not_held(request.ids, partitions[client], client)
            return instance_wise(partitions, ids=request.ids)
        return instance_wise(
            partitions, fraction=request.fraction, clients=request.clients, seed=request.seed
        )
    # backdoor: the requester's poisoned samples, labelled with the attack's target.
    ids = np.asarray(poisoned.get(client, ()), dtype=np.int64)
    if ids.size == 0:
        raise RequestRefused(f"client {client} holds no poisoned samples")
    _not_held(ids, partitions[client], client)
    targets = np.unique(labels[ids])
    if targets.size != 1:
        raise RequestRefused(
            f"client {client}'s poisoned samples carry labels {targets.tolist()}, "
            f"not one target; pass the poisoned training labels"
        )
    # instance_wise assigns the ids to their holder and refuses a whole-federation set.
    held = instance_wise(partitions, ids=ids)
    return ForgetSet(
        "backdoor",
        held.ids_by_client,
        f"{ids.size} poisoned samples of client {client} (target {int(targets[0])})",
        target=int(targets[0]),
    )
