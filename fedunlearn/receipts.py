"""Receipts a node can check: each signed by the server and chained to the one before.

A receipt (a JSON object: the request, the method and its settings, the cost, the
metrics before and after, the digest of the model served afterwards) is sealed by
:func:`seal`: it gets ``previous``, the SHA-256 of the sealed receipt before it in
the ledger (:data:`GENESIS` for the first), and ``signature``, the server's Ed25519
signature over its canonical JSON (sorted keys, no spaces, ``signature`` left out).
Editing any byte of a receipt breaks its signature; editing, dropping or
reordering receipts breaks the chain. :func:`verify` and :func:`verify_chain`
check both with the server's public key only.

The private key lives in the server's state folder, created 0600
(:func:`load_or_create_key`); the public key is written beside the ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedunlearn.errors import UserError

__all__ = ["GENESIS", "ReceiptInvalid", "canonical", "load_or_create_key", "load_public_key",
           "receipt_hash", "seal", "verify", "verify_chain", "write_public_key"]

#: ``previous`` of the first receipt of a ledger.
GENESIS = "0" * 64
_SEALS = ("previous", "signature")


class ReceiptInvalid(UserError):
    """A receipt whose signature or chain does not check (one line)."""


def canonical(receipt: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: canonical JSON of ``receipt`` without its signature."""
    body = {k: v for k, v in receipt.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def receipt_hash(receipt: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a sealed receipt, signature included: the next one's ``previous``."""
    text = json.dumps(dict(receipt), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(receipt: Mapping[str, Any], key: Ed25519PrivateKey,
         previous: str = GENESIS) -> dict[str, Any]:
    """``receipt`` chained to ``previous`` and signed by ``key``.

    Raises
    ------
    ValueError
        The receipt already carries ``previous`` or ``signature``, or holds NaN/Inf
        (not representable in canonical JSON).
    """
    taken = [k for k in _SEALS if k in receipt]
    if taken:
        raise ValueError(f"receipt already holds {taken}")
    sealed = {**receipt, "previous": previous}
    sealed["signature"] = key.sign(canonical(sealed)).hex()
    return sealed


def verify(receipt: Mapping[str, Any], public_key: Ed25519PublicKey) -> None:
    """Check one receipt's signature.

    Raises
    ------
    ReceiptInvalid
        No signature, a malformed one, or one that does not match the content.
    """
    signature = receipt.get("signature")
    if not isinstance(signature, str):
        raise ReceiptInvalid("the receipt carries no signature")
    try:
        public_key.verify(bytes.fromhex(signature), canonical(receipt))
    except (ValueError, InvalidSignature):
        raise ReceiptInvalid("the signature does not match the receipt: it was altered or "
                             "signed by another key") from None


def verify_chain(receipts: Iterable[Mapping[str, Any]], public_key: Ed25519PublicKey) -> int:
    """Check every signature and that each receipt names the one before it.

    Returns
    -------
    int
        How many receipts were checked.

    Raises
    ------
    ReceiptInvalid
        Naming the first receipt (by position) that fails.
    """
    previous = GENESIS
    count = 0
    for count, receipt in enumerate(receipts, start=1):
        try:
            verify(receipt, public_key)
        except ReceiptInvalid as exc:
            raise ReceiptInvalid(f"receipt {count}: {exc}") from None
        if receipt.get("previous") != previous:
            raise ReceiptInvalid(f"receipt {count} does not follow receipt {count - 1}: the "
                                 "chain was edited, reordered or cut")
        previous = receipt_hash(receipt)
    return count


def load_or_create_key(state_dir: str | Path) -> Ed25519PrivateKey:
    """The server's signing key in ``state_dir/server-key.pem``, created 0600 if missing."""
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "server-key.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ReceiptInvalid(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # O_EXCL and the mode at creation: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def write_public_key(key: Ed25519PrivateKey, path: str | Path) -> Path:
    """Write ``key``'s public half (PEM) to ``path``, for nodes and auditors."""
    path = Path(path)
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a public key written by :func:`write_public_key`.

    Raises
    ------
    ReceiptInvalid
        The file is missing or holds no Ed25519 public key.
    """
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ReceiptInvalid(f"cannot read the public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReceiptInvalid(f"{path} is not an Ed25519 public key")
    return key
