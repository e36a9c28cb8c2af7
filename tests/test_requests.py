"""Forget requests: validation, JSON wire form, ids, and forget sets per kind with refusals."""

import json
import re

import numpy as np
import pytest

from fedunlearn.data import backdoor, class_wise, client_wise, instance_wise
from fedunlearn.requests import (
    CONTENT_FIELDS,
    KINDS,
    ForgetRequest,
    RequestRefused,
    materialize,
    new_request_id,
    scenario_request,
)

# 30 samples, classes 0..4; samples 24..29 (class 4) belong to no client, so class 4
# exists in the labels but is held by nobody. Client 3 holds nothing.
LABELS = np.array([0, 1, 2, 3] * 6 + [4] * 6)
PARTS = [np.arange(0, 8), np.arange(8, 16), np.arange(16, 24), np.array([], dtype=np.int64)]
CREATED = "2026-01-02T03:04:05+00:00"


def _request(**fields: object) -> ForgetRequest:
    return ForgetRequest(**{"request_id": "r1", "client": 0, "created": CREATED, **fields})


def _same(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


# ---- the request itself --------------------------------------------------------
EXAMPLES = [
    {"kind": "client"},
    {"kind": "class", "cls": 2},
    {"kind": "instance", "ids": (1, 5)},
    {"kind": "instance", "fraction": 0.5, "clients": (0, 2), "seed": 7},
    {"kind": "instance", "fraction": 1.0},
    {"kind": "backdoor", "origin": "client"},
]


@pytest.mark.parametrize("fields", EXAMPLES)
def test_json_round_trip(fields: dict) -> None:
    request = _request(**fields)
    text = request.to_json()
    assert "\n" not in text
    assert ForgetRequest.from_json(text) == request
    assert ForgetRequest.from_json(text.encode()) == request


def test_ids_and_clients_are_normalized() -> None:
    request = _request(kind="instance", ids=[5, 1, 5, np.int64(3)])
    assert request.ids == (1, 3, 5)
    assert type(request.ids[1]) is int
    request = _request(kind="instance", fraction=1, clients=[2, 0, 2])
    assert request.clients == (0, 2)
    assert request.fraction == 1.0


def test_created_defaults_to_now_and_origin_to_scenario() -> None:
    request = ForgetRequest(request_id="x", kind="client", client=0)
    assert request.origin == "scenario"
    assert request.created.endswith("+00:00")


def _json_with(**changes: object) -> str:
    data = json.loads(_request(kind="instance", ids=(1,)).to_json())
    for key, value in changes.items():
        if value is _DROP:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


_DROP = object()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "request is not valid JSON"),
        ("[1, 2]", "request must be a JSON object, got list"),
        (_json_with(kind="everything"), "unknown request kind 'everything'; known: client, "),
        (_json_with(client="0"), "client must be an integer, got '0'"),
        (_json_with(client=True), "client must be an integer, got True"),
        (_json_with(client=-1), "client must be in [0, 2^63 - 1], got -1"),
        (_json_with(ids=["a"]), "ids entry must be an integer, got 'a'"),
        (_json_with(ids=3), "ids must be a list of integers, got 3"),
        (_json_with(ids=[1, -2]), "ids entry must be in [0, 2^63 - 1], got -2"),
        (_json_with(ids=[]), "ids is empty"),
        (_json_with(ids=None, fraction="0.5"), "fraction must be a number, got '0.5'"),
        (_json_with(ids=None, fraction=0), "fraction must be in (0, 1], got 0"),
        (_json_with(ids=None, fraction=1.5), "fraction must be in (0, 1], got 1.5"),
        (_json_with(seed=1.5), "seed must be an integer, got 1.5"),
        (_json_with(origin="server"), "unknown origin 'server'"),
        (_json_with(created="yesterday"), "created is not an ISO time: 'yesterday'"),
        (_json_with(request_id=""), "request_id must be a printable string"),
        (_json_with(extra=1), "request has unknown field(s): extra"),
        (_json_with(kind=_DROP, created=_DROP), "request lacks field(s): kind, created"),
    ],
)
def test_from_json_is_strict(text: str, message: str) -> None:
    with pytest.raises(RequestRefused) as info:
        ForgetRequest.from_json(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "class"}, "a class request needs a class"),
        ({"kind": "class", "cls": 1, "ids": (1,)}, "a class request takes no ids"),
        ({"kind": "client", "cls": 1}, "a client request takes no class"),
        ({"kind": "client", "fraction": 0.5}, "a client request takes no fraction"),
        ({"kind": "backdoor", "ids": (1,)}, "a backdoor request takes no ids"),
        ({"kind": "instance"}, "needs either ids or a fraction, not both or neither"),
        ({"kind": "instance", "ids": (1,), "fraction": 0.5}, "not both or neither"),
        ({"kind": "instance", "cls": 1, "ids": (1,)}, "an instance request takes no class"),
        ({"kind": "instance", "ids": (1,), "clients": (0,)}, "takes clients only with a fraction"),
        (
            {"kind": "instance", "fraction": 0.5, "origin": "client"},
            "a client-made instance request may draw only from its own samples",
        ),
        (
            {"kind": "instance", "fraction": 0.5, "clients": (0, 1), "origin": "client"},
            "(clients must be [0])",
        ),
    ],
)
def test_kind_specific_arguments(fields: dict, message: str) -> None:
    with pytest.raises(RequestRefused, match=re.escape(message)):
        _request(**fields)


def test_a_client_instance_request_on_its_own_samples_is_fine() -> None:
    request = _request(kind="instance", fraction=0.5, clients=(0,), origin="client")
    assert request.clients == (0,)


def test_content_is_canonical() -> None:
    # Order, duplicates and explicit defaults do not change what is forgotten.
    first = scenario_request({"kind": "instance", "client": 1, "ids": [3, 1, 3]})
    same = scenario_request({"kind": "instance", "client": 1, "ids": [1, 3], "cls": None,
                             "seed": 0})
    assert first.content() == same.content()
    assert scenario_request({"kind": "instance", "client": 1, "ids": [1, 4]}).content() != \
        first.content()
    with pytest.raises(RequestRefused, match="unknown field"):
        scenario_request({"kind": "client", "client": 0, "target": 3})
    with pytest.raises(RequestRefused, match="a class request needs a class"):
        scenario_request({"kind": "class", "client": 0})


def test_scenario_request_ids_are_random() -> None:
    # A content hash would let anyone compute (and pre-empt) the scenario's request id.
    content = {"kind": "class", "client": 0, "cls": 2, "fraction": None, "clients": None}
    request = scenario_request(content, created=CREATED)
    assert request.origin == "scenario" and request.created == CREATED
    assert request.content() == {
        "kind": "class", "client": 0, "cls": 2, "ids": None, "fraction": None,
        "clients": None, "seed": 0,
    }
    assert tuple(request.content()) == CONTENT_FIELDS
    again = scenario_request(content, created=CREATED)
    assert again.request_id != request.request_id and again.content() == request.content()
    assert len(request.request_id) == 32


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "instance", "ids": [10**23]}, r"ids entry must be in \[0, 2\^63 - 1\]"),
        ({"kind": "client", "client": 10**23}, r"client must be in \[0, 2\^63 - 1\]"),
        ({"kind": "class", "cls": 2**63}, r"class must be in \[0, 2\^63 - 1\]"),
        ({"kind": "client", "seed": -(2**63) - 1}, "seed must be in"),
        ({"kind": "instance", "fraction": 10**400}, r"fraction must be in \(0, 1\]"),
        ({"kind": "client", "request_id": "x" * 65}, "request_id must be a printable string"),
        ({"kind": "client", "request_id": "a\nb"}, "request_id must be a printable string"),
    ],
)
def test_numbers_are_bounded(fields: dict, message: str) -> None:
    # Every integer fits SQLite's INTEGER: an overflow can crash neither numpy nor the ledger.
    with pytest.raises(RequestRefused, match=message) as info:
        _request(**fields)
    assert len(str(info.value)) < 200 and "\n" not in str(info.value)


def test_from_json_refuses_huge_numbers_in_one_line() -> None:
    body = (f'{{"request_id": "r", "kind": "instance", "client": 1, "created": "{CREATED}", '
            f'"origin": "client", "ids": [{"9" * 5000}]}}')
    with pytest.raises(RequestRefused, match="not valid JSON") as info:
        ForgetRequest.from_json(body)
    assert len(str(info.value)) < 200


def test_parsing_a_request_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, fedunlearn.requests, fedunlearn.outbox; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_new_request_ids_are_random_hex() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


# ---- materialize: exact membership against the builders -------------------------
def test_materialize_client() -> None:
    forget = materialize(_request(kind="client", client=1), PARTS, LABELS, {})
    assert forget.kind == "client"
    assert _same(forget.ids_by_client, client_wise(PARTS, 1).ids_by_client)
    np.testing.assert_array_equal(forget.all_ids, PARTS[1])


def test_materialize_class_is_federation_wide() -> None:
    # Client 2 asks; the class goes on every client that holds it.
    forget = materialize(_request(kind="class", client=2, cls=1), PARTS, LABELS, {})
    assert forget.kind == "class"
    assert _same(forget.ids_by_client, class_wise(PARTS, LABELS, 1).ids_by_client)
    assert forget.clients == (0, 1, 2)
    np.testing.assert_array_equal(forget.all_ids, [1, 5, 9, 13, 17, 21])


def test_materialize_instance_ids() -> None:
    forget = materialize(_request(kind="instance", client=1, ids=(9, 14)), PARTS, LABELS, {})
    assert forget.kind == "instance"
    assert _same(forget.ids_by_client, instance_wise(PARTS, ids=[9, 14]).ids_by_client)
    assert forget.clients == (1,)
    np.testing.assert_array_equal(forget.all_ids, [9, 14])


@pytest.mark.parametrize("clients", [None, (0, 2)])
def test_materialize_instance_fraction(clients: tuple[int, ...] | None) -> None:
    request = _request(kind="instance", fraction=0.25, clients=clients, seed=3)
    forget = materialize(request, PARTS[:3], LABELS, {})
    expected = instance_wise(PARTS[:3], fraction=0.25, clients=clients, seed=3)
    assert _same(forget.ids_by_client, expected.ids_by_client)
    assert forget.clients == (clients or (0, 1, 2))
    assert all(len(ids) == 2 for ids in forget.ids_by_client.values())


def test_materialize_backdoor() -> None:
    chosen = backdoor(PARTS, LABELS, client=2, fraction=0.5, target=0, seed=1)
    poisoned_labels = LABELS.copy()
    poisoned_labels[chosen.all_ids] = 0  # as Federation applies the attack
    poisoned = dict(chosen.ids_by_client)
    forget = materialize(_request(kind="backdoor", client=2), PARTS, poisoned_labels, poisoned)
    assert forget.kind == "backdoor"
    assert forget.target == 0
    assert _same(forget.ids_by_client, chosen.ids_by_client)


# ---- materialize: refusals, one line each ---------------------------------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "client", "client": 7}, "client 7 does not exist; clients are 0..3"),
        ({"kind": "class", "cls": 9}, "class 9 is unknown; the labels hold classes 0..4"),
        ({"kind": "class", "cls": 4}, "class 4 is not held by any client"),
        ({"kind": "client", "client": 3}, "client forget set is empty"),
        ({"kind": "instance", "client": 0, "ids": (1, 9, 10)}, "2 ids are not held by client 0"),
        ({"kind": "instance", "client": 0, "ids": (99,)}, "1 ids are not held by client 0: 99"),
        ({"kind": "backdoor", "client": 1}, "client 1 holds no poisoned samples"),
        ({"kind": "instance", "fraction": 0.5, "clients": (3,)}, "instance forget set is empty"),
    ],
)
def test_materialize_refusals(fields: dict, message: str) -> None:
    with pytest.raises(RequestRefused) as info:
        materialize(_request(**fields), PARTS, LABELS, {0: np.array([1, 2])})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_refuses_to_forget_the_whole_federation() -> None:
    request = _request(kind="instance", fraction=1.0)
    with pytest.raises(RequestRefused, match="covers all 24 samples of the federation"):
        materialize(request, PARTS, LABELS, {})
    with pytest.raises(RequestRefused, match="covers all 8 samples"):
        materialize(_request(kind="client"), PARTS[:1], LABELS, {})


def test_backdoor_refusals() -> None:
    # Poisoned ids the requester does not hold.
    with pytest.raises(RequestRefused, match="1 ids are not held by client 0: 9"):
        materialize(_request(kind="backdoor"), PARTS, LABELS, {0: np.array([1, 9])})
    # Clean labels: the poisoned rows do not share one target.
    with pytest.raises(RequestRefused, match=r"carry labels \[1, 2\], not one target"):
        materialize(_request(kind="backdoor"), PARTS, LABELS, {0: np.array([1, 2])})


def test_kinds_are_the_forget_kinds() -> None:
    from fedunlearn.data import KINDS as FORGET_KINDS

    assert KINDS == FORGET_KINDS == ("client", "class", "instance", "backdoor")


# ---- several requests in one pass ------------------------------------------------
def test_requests_travel_as_one_object_or_a_list() -> None:
    one = _request(kind="class", cls=2)
    two = _request(request_id="r2", kind="instance", ids=(9,), client=1)
    from fedunlearn.requests import parse_requests, requests_json

    assert parse_requests(requests_json([one])) == [one]
    assert parse_requests(requests_json([one, two])) == [one, two]
    for bad, reason in (("[]", "empty"), ("[{", "not valid JSON"), ("[1]", "JSON object")):
        with pytest.raises(RequestRefused, match=reason):
            parse_requests(bad)


def test_one_pass_forgets_the_union_of_its_requests() -> None:
    from fedunlearn.requests import materialize_all

    cls = _request(kind="class", cls=2)
    inst = _request(request_id="r2", kind="instance", ids=(9, 10), client=1)
    both = materialize_all([cls, inst], PARTS, LABELS, {})
    assert both.kind == "instance"  # mixed kinds: a set of samples
    assert _same(both.ids_by_client, {0: np.array([2, 6]), 1: np.array([9, 10, 14]),
                                      2: np.array([18, 22])})
    same = materialize_all([cls, cls], PARTS, LABELS, {})
    assert same.kind == "class" and _same(same.ids_by_client,
                                          materialize(cls, PARTS, LABELS, {}).ids_by_client)
