"""Certificates and keys for the harness cluster, made with the `cryptography` package.

Why it is built so: one cluster CA signs everything (serving, clients, kubelets later), as
kubeadm does with its single CA, which keeps the kubeconfigs and the controller-manager's
signing flags simple. ECDSA P-256 keys: fast to make, accepted by every component and by
service-account token signing (ES256).

The functions return PEM bytes; `Pki` lays them out under a directory.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=7)  # a test cluster lives minutes; a week covers clock skew


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, orgs=()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CertificateAuthority:
    def __init__(self, cn: str = "podwire-e2e-ca"):
        self.key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def issue(self, cn: str, *, orgs=(), server_names=(), server_ips=(), client=True) -> tuple[bytes, bytes]:
        """A leaf certificate; returns (cert PEM, key PEM).

        With server_names/server_ips it is a serving certificate with those SANs.
        """
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = []
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if server_names or server_ips:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, orgs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        sans = [x509.DNSName(n) for n in server_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in server_ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _cert_pem(builder.sign(self.key, hashes.SHA256())), _key_pem(key)


def service_account_keypair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) for signing and verifying service-account tokens."""
    key = _key()
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _key_pem(key), pub


class Pki:
    """The files of a cluster's PKI in one directory (ca.crt, <name>.crt, <name>.key, sa.*)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.ca: CertificateAuthority | None = None

    def create(self) -> "Pki":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority()
        self._write("ca.crt", self.ca.cert_pem)
        self._write("ca.key", self.ca.key_pem)
        priv, pub = service_account_keypair()
        self._write("sa.key", priv)
        self._write("sa.pub", pub)
        return self

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.touch(mode=0o600)
        path.write_bytes(data)
        return path

    def path(self, name: str) -> Path:
        return self.dir / name

    def issue(self, name: str, cn: str, **kw) -> tuple[Path, Path]:
        """Issue a certificate signed by the CA, stored as <name>.crt/<name>.key."""
        assert self.ca is not None, "Pki.create() first"
        cert, key = self.ca.issue(cn, **kw)
        return self._write(f"{name}.crt", cert), self._write(f"{name}.key", key)
