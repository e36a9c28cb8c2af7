"""The credentials of a TLS federation with SuperNode authentication (Flower 1.42).

:func:`write_credentials` writes into one folder (0700, every file 0600):

- ``ca.crt`` / ``ca.key``: a certificate authority (EC P-384, self-signed). Its
  certificate is what every client trusts: the SuperLink's ``--ssl-ca-certfile`` (its
  own SuperExec and ServerApps connect back to it), each SuperNode's
  ``--root-certificates`` and ``root-certificates`` of the ``flwr`` connection.
- ``superlink.crt`` / ``superlink.key``: the SuperLink's TLS certificate, signed by
  the CA, with a SubjectAlternativeName for every DNS name and IP address clients
  connect to (``--ssl-certfile`` / ``--ssl-keyfile``).
- ``supernode-<i>.key`` / ``supernode-<i>.pub``: SuperNode ``i``'s authentication key
  pair, EC P-384 in OpenSSH format: the private key for
  ``flower-supernode --auth-supernode-private-key``, the public key for
  ``flwr supernode register``. Flower loads them with ``load_ssh_private_key`` and
  ``load_ssh_public_key`` and accepts NIST curves only (see
  ``docs/deployment-security.md``).

Keys are created with their final mode (``os.open(..., 0o600)``), so they are never
readable by others, not even briefly and whatever the umask. :class:`Layout` names
the files, for the code that starts the processes.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedunlearn.errors import UserError

__all__ = [
    "MAX_DAYS",
    "CredentialsError",
    "IPAddress",
    "Layout",
    "parse_addresses",
    "parse_names",
    "write_credentials",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The longest validity :func:`write_credentials` issues (ten years).
MAX_DAYS = 3650

# P-384 is the curve Flower generates for SuperNodes itself
# (flwr/supercore/primitives/asymmetric.py, generate_key_pairs); OpenSSH encodes
# P-256/384/521 only, and `flwr supernode register` takes NIST curves only.
_CURVE = ec.SECP384R1
_HASH = hashes.SHA384
# Certificates start an hour in the past: a machine whose clock is a little behind
# the one that issued them must not find them "not yet valid".
_BACKDATE = datetime.timedelta(hours=1)
# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Every file write_credentials may have written: what --force replaces and what
# refuses a second run without it.
_OURS = re.compile(r"^(ca|superlink)\.(crt|key)$|^supernode-\d+\.(key|pub)$")


class CredentialsError(UserError):
    """Credentials that cannot be written as asked (one line)."""


@dataclass(frozen=True)
class Layout:
    """Where each file of a federation's credentials lives under ``root``."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (PEM): the root certificate every client trusts."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA's private key (PEM, PKCS#8)."""
        return self.root / "ca.key"

    @property
    def superlink_cert(self) -> Path:
        """The SuperLink's TLS certificate (PEM), signed by the CA."""
        return self.root / "superlink.crt"

    @property
    def superlink_key(self) -> Path:
        """The SuperLink's TLS private key (PEM, PKCS#8, unencrypted)."""
        return self.root / "superlink.key"

    def node_key(self, i: int) -> Path:
        """SuperNode ``i``'s authentication private key (OpenSSH format)."""
        return self.root / f"supernode-{i}.key"

    def node_public_key(self, i: int) -> Path:
        """SuperNode ``i``'s public key (one OpenSSH line), to register it."""
        return self.root / f"supernode-{i}.pub"

    def existing(self) -> list[Path]:
        """The files of this layout already in ``root`` (of any node count)."""
        if not self.root.is_dir():
            return []
        return sorted(path for path in self.root.iterdir() if _OURS.match(path.name))


def parse_names(text: str) -> tuple[str, ...]:
    """DNS names from a comma-separated list, lower-cased, duplicates dropped.

    Raises
    ------
    CredentialsError
        A name is not an RFC 1123 host name (wildcards are refused too) or is an IP
        address.
    """
    names: list[str] = []
    for part in text.split(","):
        if not part.strip():
            continue
        name = part.strip().lower().rstrip(".")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:  # TLS clients match an IP address against IP SANs only
            raise CredentialsError(f"'{name}' is an IP address: list it among the addresses")
        if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
            raise CredentialsError(f"'{part.strip()}' is not a DNS name (letters, digits, "
                                   "hyphens and dots)")
        if name not in names:
            names.append(name)
    return tuple(names)


def parse_addresses(text: str) -> tuple[IPAddress, ...]:
    """IP addresses (v4 or v6) from a comma-separated list, duplicates dropped.

    Raises
    ------
    CredentialsError
        An entry is no IP address, or is a wildcard bind address (0.0.0.0, ::).
    """
    addresses: list[IPAddress] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            address = ipaddress.ip_address(part.strip())
        except ValueError:
            raise CredentialsError(f"'{part.strip()}' is not an IP address") from None
        if address.is_unspecified:
            # A bind address: no client connects to it (the SuperLink's own SuperExec
            # connects to 127.0.0.1 when it listens on 0.0.0.0).
            raise CredentialsError(f"{address} is a bind address, not one clients connect "
                                   "to; give the addresses they use (e.g. 127.0.0.1)")
        if address not in addresses:
            addresses.append(address)
    return tuple(addresses)


def write_credentials(
    directory: str | Path,
    *,
    names: Sequence[str],
    addresses: Sequence[IPAddress],
    nodes: int,
    days: int = 365,
    force: bool = False,
) -> dict[Path, str]:
    """Create a CA, the SuperLink's certificate and ``nodes`` SuperNode key pairs.

    Everything is generated in memory and checked before anything is written.

    Parameters
    ----------
    directory : str or Path
        The folder to write into; created (with its parents) if missing, made 0700.
    names : sequence of str
        DNS names for the SuperLink certificate's SubjectAlternativeName (as from
        :func:`parse_names`).
    addresses : sequence of IPv4Address or IPv6Address
        IP addresses for that SubjectAlternativeName (as from :func:`parse_addresses`).
    nodes : int
        How many SuperNode key pairs, ``supernode-0`` to ``supernode-<nodes-1>``.
    days : int, default 365
        Validity of both certificates, 1 to :data:`MAX_DAYS`.
    force : bool, default False
        Replace the credentials already in ``directory`` (all of them, so that no
        stale SuperNode key of an earlier, larger run is left behind).

    Returns
    -------
    dict of Path to str
        Every file written, in order, with what it is for.

    Raises
    ------
    CredentialsError
        No SAN at all, ``nodes`` < 1, ``days`` out of range, ``directory`` is not a
        folder, or it already holds credentials and ``force`` is False.
    """
    if not names and not addresses:
        raise CredentialsError("the SuperLink certificate needs at least one DNS name or "
                               "IP address that clients connect to")
    if nodes < 1:
        raise CredentialsError(f"at least one SuperNode key pair is needed (nodes={nodes})")
    if not 1 <= days <= MAX_DAYS:
        raise CredentialsError(f"validity must be 1 to {MAX_DAYS} days (days={days})")
    layout = Layout(Path(directory))
    if layout.root.exists() and not layout.root.is_dir():
        raise CredentialsError(f"{layout.root} exists and is not a folder")
    existing = layout.existing()
    if existing and not force:
        raise CredentialsError(f"{layout.root} already holds credentials "
                               f"({', '.join(p.name for p in existing[:3])}"
                               f"{', ...' if len(existing) > 3 else ''}); "
                               "pass --force to replace them")

    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = _ca(now, days)
    link_key, link_cert = _server_cert(ca_key, ca_cert, names, addresses, now, days)
    sans = ", ".join([*names, *map(str, addresses)])
    files: dict[Path, tuple[bytes, str]] = {
        layout.ca_cert: (_pem_cert(ca_cert),
                         "CA certificate: --ssl-ca-certfile of the SuperLink, "
                         "--root-certificates of each SuperNode, root-certificates of the "
                         "flwr connection"),
        layout.ca_key: (_pem_key(ca_key),
                        "CA private key: keep it off the federation's machines"),
        layout.superlink_cert: (_pem_cert(link_cert),
                                f"SuperLink certificate for {sans}, {days} days: "
                                "--ssl-certfile"),
        layout.superlink_key: (_pem_key(link_key), "SuperLink TLS key: --ssl-keyfile"),
    }
    for i in range(nodes):
        private, public = _node_key_pair(f"supernode-{i}")
        files[layout.node_key(i)] = (
            private, f"SuperNode {i}: flower-supernode --auth-supernode-private-key")
        files[layout.node_public_key(i)] = (
            public, f"SuperNode {i}: flwr supernode register {layout.node_public_key(i)}")

    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(layout.root, 0o700)  # mkdir's mode is masked by the umask; it may have existed
    for stale in existing:  # only with force
        stale.unlink()
    for path, (content, _) in files.items():
        _write_private(path, content)
    return {path: role for path, (_, role) in files.items()}


def _ca(now: datetime.datetime, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(_CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedunlearn federation CA")])
    public = key.public_key()
    cert = (
        _validity(x509.CertificateBuilder(), now, days)
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        # Signs server certificates only: no intermediate CAs below it.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                       critical=False)
        .sign(key, _HASH())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: Iterable[str],
    addresses: Iterable[IPAddress],
    now: datetime.datetime,
    days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(_CURVE())
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    sans += [x509.IPAddress(address) for address in addresses]
    # Clients match the SAN only; the common name just labels the certificate.
    label = sans[0].value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _validity(x509.CertificateBuilder(), now, days)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(label))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, _HASH())
    )
    return key, cert


def _validity(builder: x509.CertificateBuilder, now: datetime.datetime,
              days: int) -> x509.CertificateBuilder:
    return (builder.serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days)))


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """A CA signs certificates; the server signs its TLS handshakes (ECDHE + ECDSA)."""
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _node_key_pair(comment: str) -> tuple[bytes, bytes]:
    """A SuperNode's key pair as Flower 1.42 loads it: OpenSSH private key, unencrypted
    (``load_ssh_private_key(data, None)``), and one OpenSSH public-key line."""
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public + f" {comment}\n".encode()


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted: the SuperLink hands the key file to uvicorn without a password.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, content: bytes) -> None:
    """Write a new file 0600 from its creation on; never follow or reuse an existing one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        # Another process wrote here since the check: do not overwrite its credentials.
        raise CredentialsError(f"{path} appeared while writing; run again") from None
    os.fchmod(fd, 0o600)  # the umask may have taken bits off the creation mode
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
