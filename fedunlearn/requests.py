"""Forget requests: what a "forget me" request says, its wire form, and its forget set.

A :class:`ForgetRequest` names *what* to forget (a client's data, a class, some
samples, a client's poisoned samples) without carrying any data: every party
derives the same partitions from the config (:mod:`fedunlearn.federation`), so
:func:`materialize` turns a request into a :class:`~fedunlearn.data.ForgetSet`
on the server with the builders of :mod:`fedunlearn.data.forget`.

Requests come from two places. The experiment's scenario (``conf/scenario``)
schedules one; its id is :func:`request_id_for` its content, so submitting the
same scenario again is a no-op in the ledger. A client's own
``fedunlearn forget`` command makes one with a random :func:`new_request_id`.

Anything malformed or impossible raises :class:`RequestRefused` with a one-line
reason, which the server records in its ledger and reports back.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from numbers import Integral, Real
from typing import Any

import numpy as np
import numpy.typing as npt

from fedunlearn.data.forget import (
    KINDS,
    ForgetSet,
    _check_client,
    class_wise,
    client_wise,
    instance_wise,
)

__all__ = [
    "CONTENT_FIELDS",
    "KINDS",
    "ORIGINS",
    "ForgetRequest",
    "RequestRefused",
    "materialize",
    "new_request_id",
    "request_id_for",
    "scenario_request",
]

ORIGINS: tuple[str, ...] = ("scenario", "client")
# The fields that say what is forgotten; request_id_for hashes exactly these.
CONTENT_FIELDS: tuple[str, ...] = ("kind", "client", "cls", "ids", "fraction", "clients", "seed")
# Fields a serialized request must carry; the others default as in ForgetRequest.
_REQUIRED_JSON: tuple[str, ...] = ("request_id", "kind", "client", "created", "origin")
# Hex digits of a scenario request id: 64 bits, ample for the handful of
# scenario requests a ledger ever holds.
_ID_HEX = 16


class RequestRefused(ValueError):
    """A request that is malformed or cannot be carried out; the message is one line."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_request_id() -> str:
    """A fresh random id for a client-made request (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def _int(name: str, value: object, *, minimum: int | None = 0) -> int:
    # bool is an Integral too, but True as a client id is a type error, not client 1.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise RequestRefused(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise RequestRefused(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _int_tuple(name: str, value: object) -> tuple[int, ...] | None:
    """Sorted, de-duplicated non-negative ints, so equal requests compare and hash equal."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise RequestRefused(f"{name} must be a list of integers, got {value!r}")
    items = sorted({_int(f"{name} entry", item) for item in value})
    if not items:
        raise RequestRefused(f"{name} is empty; give at least one")
    return tuple(items)


def _fraction(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise RequestRefused(f"fraction must be a number, got {value!r}")
    if not 0.0 < float(value) <= 1.0:
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
        Unique id: :func:`request_id_for` the content (scenario requests) or
        :func:`new_request_id` (client-made ones).
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
        if not isinstance(self.request_id, str) or not self.request_id.strip():
            raise RequestRefused(f"request_id must be a non-empty string, got {self.request_id!r}")
        if self.kind not in KINDS:
            raise RequestRefused(f"unknown request kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.origin not in ORIGINS:
            raise RequestRefused(f"unknown origin {self.origin!r}; known: {', '.join(ORIGINS)}")
        if not isinstance(self.created, str):
            raise RequestRefused(f"created must be an ISO time string, got {self.created!r}")
        try:
            datetime.fromisoformat(self.created)
        except ValueError:
            raise RequestRefused(f"created is not an ISO time: {self.created!r}") from None
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
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestRefused(f"request is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RequestRefused(f"request must be a JSON object, got {type(data).__name__}")
        missing = [name for name in _REQUIRED_JSON if name not in data]
        if missing:
            raise RequestRefused(f"request lacks field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise RequestRefused(f"request has unknown field(s): {', '.join(unknown)}")
        return cls(**data)


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def request_id_for(content: Mapping[str, Any]) -> str:
    """Deterministic id of a request's content, so that re-submitting it is idempotent.

    The content is validated and normalized as a :class:`ForgetRequest` first,
    so ``ids=[3, 1]`` and ``ids=[1, 3, 3]`` get the same id, and an absent
    optional field equals an explicit ``None``.

    Parameters
    ----------
    content : mapping
        Some of :data:`CONTENT_FIELDS` (``kind`` and ``client`` at least).

    Returns
    -------
    str
        The first 16 hex digits of the SHA-256 of the canonical JSON content.

    Raises
    ------
    RequestRefused
        Unknown fields, or content that is not a valid request.
    """
    return _scenario(content).request_id


def scenario_request(content: Mapping[str, Any], created: str | None = None) -> ForgetRequest:
    """A request of the experiment's scenario, with its id :func:`request_id_for` its content.

    Parameters
    ----------
    content : mapping
        Some of :data:`CONTENT_FIELDS`, e.g. ``cfg.scenario.request`` as a dict.
    created : str, optional
        ISO time; default now.
    """
    request = _scenario(content)
    return request if created is None else _with(request, created=created)


def _scenario(content: Mapping[str, Any]) -> ForgetRequest:
    unknown = sorted(set(content) - set(CONTENT_FIELDS))
    if unknown:
        raise RequestRefused(f"request content has unknown field(s): {', '.join(unknown)}")
    # Validate and normalize with a placeholder id, then hash the normalized content.
    draft = ForgetRequest(request_id="pending", origin="scenario", **dict(content))
    canonical = json.dumps(draft.content(), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:_ID_HEX]
    return _with(draft, request_id=digest)


def _with(request: ForgetRequest, **changes: Any) -> ForgetRequest:
    return ForgetRequest(**{**asdict(request), **changes})


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
    except ValueError as exc:  # the builders' refusals, already one line each
        raise RequestRefused(str(exc).splitlines()[0]) from exc


def _materialize(
    request: ForgetRequest,
    partitions: Sequence[np.ndarray],
    labels: np.ndarray,
    poisoned: Mapping[int, np.ndarray],
) -> ForgetSet:
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
