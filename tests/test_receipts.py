"""Signed, chained receipts: any edited byte, swapped key or reordered chain fails."""

import json
import stat

import pytest

from fedunlearn.receipts import (
    GENESIS,
    ReceiptInvalid,
    load_or_create_key,
    load_public_key,
    receipt_hash,
    seal,
    verify,
    verify_chain,
    write_public_key,
)


def chain(key, n=3):
    sealed, previous = [], GENESIS
    for i in range(n):
        receipt = seal({"request": f"r{i}", "method": "NoT", "cost": {"bytes": 10 * i},
                        "model_after": f"{i:064x}"}, key, previous)
        sealed.append(receipt)
        previous = receipt_hash(receipt)
    return sealed


def test_a_chain_verifies_with_the_public_key_only(tmp_path):
    key = load_or_create_key(tmp_path / "state")
    public = load_public_key(write_public_key(key, tmp_path / "server-key.pub.pem"))
    receipts = chain(key)
    assert verify_chain(receipts, public) == 3
    # The same key comes back from the state folder; it is private to its owner.
    path = tmp_path / "state" / "server-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert verify_chain(chain(load_or_create_key(tmp_path / "state")), public) == 3


def test_any_edited_byte_fails(tmp_path):
    key = load_or_create_key(tmp_path)
    public = key.public_key()
    receipt = chain(key, 1)[0]
    text = json.dumps(receipt)
    for i in range(0, len(text), 7):  # flip characters all over the serialized receipt
        edited_text = text[:i] + ("0" if text[i] != "0" else "1") + text[i + 1:]
        try:
            edited = json.loads(edited_text)
        except ValueError:
            continue  # not JSON any more: nothing to verify
        if edited == receipt:
            continue
        with pytest.raises(ReceiptInvalid):
            verify(edited, public)


def test_a_reordered_cut_or_foreign_chain_fails(tmp_path):
    key = load_or_create_key(tmp_path / "a")
    receipts = chain(key)
    with pytest.raises(ReceiptInvalid, match="receipt 2 does not follow receipt 1"):
        verify_chain([receipts[0], receipts[2], receipts[1]], key.public_key())
    with pytest.raises(ReceiptInvalid, match="receipt 1 does not follow"):
        verify_chain(receipts[1:], key.public_key())
    other = load_or_create_key(tmp_path / "b")
    with pytest.raises(ReceiptInvalid, match="receipt 1: the signature does not match"):
        verify_chain(receipts, other.public_key())
    with pytest.raises(ReceiptInvalid, match="no signature"):
        verify({"request": "r"}, key.public_key())
    with pytest.raises(ValueError, match="already holds"):
        seal(receipts[0], key)


def test_bad_key_files_are_one_line(tmp_path):
    with pytest.raises(ReceiptInvalid, match="cannot read the public key"):
        load_public_key(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ReceiptInvalid, match="cannot read the public key"):
        load_public_key(tmp_path / "junk.pem")


def test_the_receipt_command_exports_and_verifies_a_ledger(tmp_path, capsys):
    from fedunlearn.cli import main
    from fedunlearn.ledger import Ledger
    from fedunlearn.requests import ForgetRequest

    key = load_or_create_key(tmp_path / "state")
    public = write_public_key(key, tmp_path / "ledger.pub.pem")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        for rid in ("a", "b"):
            ledger.record(ForgetRequest(request_id=rid, kind="client", client=0))
            ledger.add_receipt(rid, "NoT", {"model_after": rid * 64}, key)
        second = ledger.receipts("b")["NoT"]
    export = tmp_path / "chain.json"
    assert main(["receipt", "export", "--ledger", str(tmp_path / "ledger.sqlite"),
                 "--out", str(export)]) == 0
    receipt = tmp_path / "b.json"
    receipt.write_text(json.dumps(second))
    verify_args = ["receipt", "verify", str(receipt), "--public-key", str(public)]
    assert main([*verify_args, "--ledger-export", str(export)]) == 0
    assert "chain of 2 receipts intact" in capsys.readouterr().out
    # One edited byte in the receipt, or in the chain: exit 2, one line.
    receipt.write_text(json.dumps({**second, "model_after": "c" * 64}))
    assert main(verify_args) == 2
    assert capsys.readouterr().err.count("\n") == 1
    receipt.write_text(json.dumps(second))
    chain = json.loads(export.read_text())
    chain[0]["cost"] = 1
    export.write_text(json.dumps(chain))
    assert main([*verify_args, "--ledger-export", str(export)]) == 2
    assert "receipt 1: the signature does not match" in capsys.readouterr().err
