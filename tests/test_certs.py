"""``fedunlearn certs``: a CA, the SuperLink's certificate and SuperNode keys Flower 1.42 loads.

No Flower process starts here: the certificate is checked with cryptography's X.509
verifier and a real TLS handshake in memory (the ``ssl`` contexts Flower's HTTP client
and uvicorn build), the node keys with Flower's own loaders.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import ssl
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedunlearn.cli import main
from fedunlearn.commands.certs import certs_command
from fedunlearn.pki import Layout


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def creds(tmp_path: Path, capsys) -> Layout:
    """Credentials for 2 nodes, written under a umask that would leave files world-readable."""
    with umask(0):
        code = certs_command([str(tmp_path / "creds"), "--names", "superlink,Link.example.org",
                              "--addresses", "127.0.0.1,10.1.2.3,::1", "--nodes", "2"])
    assert code == 0
    out = capsys.readouterr().out
    layout = Layout(tmp_path / "creds")
    # Every file written is printed with what it is for.
    assert {line.split()[0] for line in out.splitlines()} == {str(p) for p in layout.existing()}
    return layout


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_superlink_certificate_verifies_against_the_ca(creds: Layout, tmp_path: Path) -> None:
    ca, leaf = load_cert(creds.ca_cert), load_cert(creds.superlink_cert)
    # cryptography's RFC 5280 web-PKI verifier: chain, key usages, validity and the SAN.
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier
    for subject in (x509.DNSName("superlink"), x509.DNSName("link.example.org"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1"))):
        assert verifier(subject).verify(leaf, [])[-1] == ca
    with pytest.raises(VerificationError):
        verifier(x509.DNSName("localhost")).verify(leaf, [])  # not asked for
    # Another run's CA does not vouch for this SuperLink.
    assert certs_command([str(tmp_path / "other"), "--nodes", "1"]) == 0
    other = PolicyBuilder().store(Store([load_cert(Layout(tmp_path / "other").ca_cert)]))
    with pytest.raises(VerificationError):
        other.build_server_verifier(x509.DNSName("superlink")).verify(leaf, [])
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(
        days=364)


def test_the_sans_are_exactly_the_ones_asked_for(creds: Layout) -> None:
    san = load_cert(creds.superlink_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink", "link.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("127.0.0.1", "10.1.2.3", "::1")]


def handshake(creds: Layout, server_hostname: str) -> None:
    """A TLS handshake in memory: the server as uvicorn loads --ssl-certfile/--ssl-keyfile,
    the client as Flower's HTTP client loads root certificates
    (flwr/supercore/protobuf/client.py, ProtobufClient.from_server_address)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(creds.superlink_cert, creds.superlink_key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=creds.ca_cert.read_bytes().decode("ascii"))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(to_server, to_client, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def test_tls_clients_accept_the_superlink_for_its_names_only(creds: Layout) -> None:
    for name in ("superlink", "127.0.0.1", "10.1.2.3"):
        handshake(creds, name)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(creds, "elsewhere.example.org")


def test_keys_are_0600_and_the_folder_0700(creds: Layout) -> None:
    assert stat.S_IMODE(creds.root.stat().st_mode) == 0o700
    files = creds.existing()
    assert len(files) == 8
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o600}


def test_an_existing_folder_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    (folder / "notes.txt").write_text("not a key")
    assert certs_command([str(folder), "--nodes", "1"]) == 0
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "notes.txt").read_text() == "not a key"


def test_node_keys_load_as_flower_loads_them(creds: Layout) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import (
        public_key_to_bytes,
        sign_message,
        uses_nist_ec_curve,
        verify_signature,
    )
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    registered = set()
    for i in range(2):
        # What flower-supernode --auth-supernode-private-key does with the file.
        private, public = _try_setup_client_authentication(argparse.Namespace(
            auth_supernode_private_key=str(creds.node_key(i)), auth_supernode_public_key=None))
        # What `flwr supernode register FILE` sends: the SuperLink matches the two.
        sent = try_load_public_key(creds.node_public_key(i))
        assert sent == public_key_to_bytes(public)
        assert uses_nist_ec_curve(public)
        # The node's signed timestamps verify with the registered key.
        assert verify_signature(public, b"2026-01-01T00:00:00", sign_message(
            private, b"2026-01-01T00:00:00"))
        registered.add(sent)
    assert len(registered) == 2  # one key per node: a key activates one node at a time


def test_a_second_run_refuses_without_force(creds: Layout, capsys) -> None:
    before = {path: path.read_bytes() for path in creds.existing()}
    assert certs_command([str(creds.root), "--nodes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert {path: path.read_bytes() for path in creds.existing()} == before
    # --force replaces everything, stale node keys of the larger run included.
    assert certs_command([str(creds.root), "--nodes", "1", "--force"]) == 0
    assert [p.name for p in creds.existing()] == [
        "ca.crt", "ca.key", "superlink.crt", "superlink.key", "supernode-0.key",
        "supernode-0.pub"]
    assert creds.ca_key.read_bytes() != before[creds.ca_key]
    assert stat.S_IMODE(creds.node_key(0).stat().st_mode) == 0o600


@pytest.mark.parametrize(("args", "message"), [
    (["--nodes", "0"], "at least one SuperNode"),
    (["--nodes", "two"], "invalid int value"),
    (["--addresses", "300.1.2.3"], "'300.1.2.3' is not an IP address"),
    (["--addresses", "0.0.0.0"], "bind address"),
    (["--names", "under_score"], "'under_score' is not a DNS name"),
    (["--names", "superlink,10.0.0.1"], "'10.0.0.1' is an IP address"),
    (["--names", "", "--addresses", ""], "at least one DNS name or IP address"),
    (["--days", "0"], "1 to 3650 days"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys, args: list[str],
                                                  message: str) -> None:
    target = tmp_path / "creds"
    assert main(["certs", str(target), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedunlearn certs: error: ") and err.count("\n") == 1
    assert message in err
    assert not target.exists()


def test_a_file_in_the_way_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "creds").write_text("")
    assert certs_command([str(tmp_path / "creds")]) == 2
    assert "is not a folder" in capsys.readouterr().err
