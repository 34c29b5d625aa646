"""
Reading PEM certificates and private keys from files, with errors that name
the file and the problem: a file that cannot be read, one that holds no PEM
certificate (or key), a key that does not match its certificate, a chain
whose certificates do not issue one another.  Used by TLS listeners (the
certificates they serve) and by TLS to backends (trust roots and client
certificates).

A certificate out of its validity period is no error (a server keeps
starting with it) but a warning, from L{validityWarning}.
"""

from __future__ import annotations

import datetime

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

# The keys that can sign a TLS handshake.
PrivateKey = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey
    | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
)


class CertificateError(ValueError):
    """
    A certificate or key file is unusable; the message names the file and
    says why.
    """


def readFile(path: str) -> bytes:
    """
    The bytes of C{path}.

    @raise CertificateError: it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(f"cannot read {path!r}: {e.strerror}") from e


def loadCertificates(path: str) -> tuple[x509.Certificate, ...]:
    """
    The PEM certificates in C{path}, in the file's order.

    @raise CertificateError: it cannot be read or holds no PEM certificate.
    """
    data = readFile(path)
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        hint = " (it holds a private key: is it the key file?)" if b"PRIVATE KEY-----" in data else ""
        raise CertificateError(f"{path!r} is not a PEM certificate{hint}") from None


def loadChain(path: str) -> tuple[x509.Certificate, ...]:
    """
    A certificate file to serve: the certificate first, then any
    intermediates, each one the issuer of the one before.

    @raise CertificateError: as L{loadCertificates}, or a certificate of
        the chain did not issue the one before it.
    """
    chain = loadCertificates(path)
    for i in range(1, len(chain)):
        try:
            chain[i - 1].verify_directly_issued_by(chain[i])
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError(
                f"{path!r}: certificate {i + 1} of the chain ({subject(chain[i])}) did not issue "
                f"certificate {i} ({subject(chain[i - 1])}); put the server's certificate first, "
                "then each issuer in turn"
            ) from None
    return chain


def loadKey(path: str) -> PrivateKey:
    """
    The unencrypted PEM private key in C{path}.

    @raise CertificateError: it cannot be read, holds no PEM private key,
        or the key is encrypted.
    """
    data = readFile(path)
    try:
        key = serialization.load_pem_private_key(data, None)
    except TypeError:
        raise CertificateError(f"{path!r}: the private key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        hint = " (it holds a certificate: is it the certificate file?)" if b"CERTIFICATE-----" in data else ""
        raise CertificateError(f"{path!r} is not a PEM private key{hint}") from None
    if not isinstance(key, PrivateKey):
        raise CertificateError(f"{path!r}: a {type(key).__name__} cannot sign a TLS handshake")
    return key


@attrs.frozen
class KeyedCertificate:
    """
    A certificate (with its chain) and its private key, as read from files.

    @ivar chain: the certificate first, then its intermediates.
    """

    chain: tuple[x509.Certificate, ...]
    key: PrivateKey
    certPath: str
    keyPath: str

    @property
    def certificate(self) -> x509.Certificate:
        """
        The certificate itself (the first of the chain).
        """
        return self.chain[0]


def loadKeyedCertificate(certPath: str, keyPath: str) -> KeyedCertificate:
    """
    Read a certificate file (with its chain) and its key file, and check
    that the key is the certificate's.

    @raise CertificateError: either file is unusable, or the key is not
        the certificate's.
    """
    chain = loadChain(certPath)
    key = loadKey(keyPath)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != chain[0].public_key().public_bytes(der, public):
        raise CertificateError(
            f"the key in {keyPath!r} does not match the certificate in {certPath!r}")
    return KeyedCertificate(chain, key, certPath, keyPath)


def subject(certificate: x509.Certificate) -> str:
    """
    The certificate's subject, as OpenSSL writes it (C{CN=app.example}).
    """
    return certificate.subject.rfc4514_string() or "an empty subject"


def dnsNames(certificate: x509.Certificate) -> tuple[str, ...]:
    """
    The host names a certificate is for, lower case, wildcards as
    C{*.example.com}: its subjectAltName DNS names, or its common name if
    it has no subjectAltName.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    else:
        names = list(san.value.get_values_for_type(x509.DNSName))
    return tuple(dict.fromkeys(name.lower().rstrip(".") for name in names if name))


def validityWarning(certificate: x509.Certificate, path: str,
                    now: datetime.datetime) -> str | None:
    """
    What is wrong with the dates of a certificate read from C{path}, if
    anything: expired, or not yet valid.
    """
    if now > certificate.not_valid_after_utc:
        return (f"certificate {path!r} ({subject(certificate)}) expired on "
                f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    if now < certificate.not_valid_before_utc:
        return (f"certificate {path!r} ({subject(certificate)}) is not valid before "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    return None
