"""A throwaway certificate authority for TLS between parties, servers and tests.

For trying TLS (``amqps://``, ``rediss://``) on a laptop, in Compose or in tests:
:func:`make_ca` makes a self-signed CA, :func:`issue` signs a server or client
certificate with it, and :func:`write_tls_files` writes a CA, one server
certificate (for RabbitMQ and Redis) and one client certificate as PEM files.
Keys are ECDSA P-256; certificates are valid for a week. A real deployment uses
its own CA: point ``TENSORFLEET_TLS_CA_FILE`` (and the servers) at it instead.

Needs the ``cryptography`` package (``pip install 'tensorfleet[ops]'``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: how long a throwaway certificate is valid
VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files :func:`write_tls_files` wrote."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def make_ca(common_name: str = "TensorFleet throwaway CA") -> Issued:
    """A self-signed CA that may sign certificates (and nothing else)."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def issue(ca: Issued, common_name: str, hosts: Sequence[str] = (), client: bool = False) -> Issued:
    """A certificate signed by ``ca``: for a server named ``hosts`` (DNS names or IPs),
    or, with ``client``, for a client (TLS client authentication)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        _builder(common_name, ca.certificate.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_tls_files(
    out: Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"), client: str = "tensorfleet"
) -> TlsFiles:
    """Write a new CA, a server certificate for ``hosts`` and a client certificate into ``out``.

    Keys are readable by their owner only; certificates by all.
    """
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    server = issue(ca, hosts[0] if hosts else "server", hosts)
    party = issue(ca, client, client=True)
    files = TlsFiles(
        ca=out / "ca.pem",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        client_cert=out / "client.pem",
        client_key=out / "client.key",
    )
    for path, data, mode in (
        (files.ca, ca.certificate_pem(), 0o644),
        (files.server_cert, server.certificate_pem(), 0o644),
        (files.server_key, server.key_pem(), 0o600),
        (files.client_cert, party.certificate_pem(), 0o644),
        (files.client_key, party.key_pem(), 0o600),
    ):
        _write(path, data, mode)
    return files


def write_fleet_certs(out: Path, hosts: Sequence[str], parties: Sequence[str]) -> list[Path]:
    """A CA (``ca.pem``), a server certificate for ``hosts`` (``server.pem``/``.key``) and
    one client certificate per party (``<party>.pem``/``.key``) in ``out``; the paths."""
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    hosts = list(dict.fromkeys(hosts))
    written = [_write(out / "ca.pem", ca.certificate_pem(), 0o644)]
    for name, issued in [
        ("server", issue(ca, hosts[0] if hosts else "server", hosts)),
        *((party, issue(ca, party, client=True)) for party in parties),
    ]:
        written.append(_write(out / f"{name}.pem", issued.certificate_pem(), 0o644))
        written.append(_write(out / f"{name}.key", issued.key_pem(), 0o600))
    return written


def _write(path: Path, data: bytes, mode: int) -> Path:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    return path
