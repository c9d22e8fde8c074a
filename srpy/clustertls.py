"""
TLS certificates made for one L{SSHCluster<srpy.cluster.SSHCluster>} (C{tls=True}): a throwaway CA
and, for each host, a server certificate for the address its engines listen on.

The CA's key lives only in this client's memory and dies with the cluster: nothing else ever
trusts that CA, so a certificate it signed means "an engine of this cluster". Each host gets its own
key and certificate (one host's key is never sent to another), naming only its engines' address
(the address the client and the engines' peers connect to: hostname checking stays on). Keys are
ECDSA P-256, made with the C{cryptography} package (C{pip install srpy[tls]}; the test extra has it
too).

    >>> ca = ClusterCA()
    >>> cert, key = ca.issue("10.0.0.3")
    >>> cert.startswith("-----BEGIN CERTIFICATE-----") and key.startswith("-----BEGIN PRIVATE KEY-----")
    True
    >>> ca.client_context().check_hostname      # a context that trusts this CA only
    True
"""

import datetime
import ipaddress
import ssl
from typing import Any, Tuple

from .errors import SRPyError

#: how long the certificates hold (the cluster's CA key is gone with the client anyway)
VALID_DAYS = 365


def _crypto() -> Any:
    """The parts of C{cryptography} this module uses (an optional dependency)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise SRPyError("tls=True needs the cryptography package to make the cluster's certificates: "
                        "pip install 'srpy[tls]' (or cryptography)") from None
    return x509, hashes, serialization, ec, NameOID


def _name_entry(text: str) -> Any:
    """An IP address or a DNS name, as a subjectAltName entry."""
    x509 = _crypto()[0]
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(text)


class ClusterCA:
    """
    A certificate authority for one cluster: its key in memory only.

    @ivar ca_pem: the CA's certificate (PEM text): what clients of the cluster trust.
    """

    def __init__(self) -> None:
        x509, hashes, serialization, ec, NameOID = _crypto()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "srpy cluster CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._certificate = (
            x509.CertificateBuilder().subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))  # hosts' clocks may be behind this one's
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256()))
        self.ca_pem = self._certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def issue(self, *names: str) -> Tuple[str, str]:
        """A fresh key and a server certificate for C{names} (IP addresses or DNS names): C{(cert_pem, key_pem)}."""
        x509, hashes, serialization, ec, NameOID = _crypto()
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName([_name_entry(name) for name in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # the engines' peer links use the same certificate: server and client authentication
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode("ascii")
        return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"), key_pem

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this CA only (and checks the engines' addresses)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca_pem)
        context.check_hostname = True
        return context
