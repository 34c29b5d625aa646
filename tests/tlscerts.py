"""
Real certificates for the TLS tests, made with the C{openssl} command: a
CA and the leaves it issues (several names, wildcards, an IP address, client
certificates), self-signed ones; and, with the C{cryptography} package (the
C{openssl} command of Debian 12 cannot date a certificate in the past), an
expired one.
"""

from __future__ import annotations

import datetime
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def openssl(*args: str) -> None:
    """
    Run the C{openssl} command, bounded in time; fail loudly.
    """
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _altNames(names: list[str]) -> str:
    return ",".join(
        f"IP:{name}" if name.replace(".", "").isdigit() or ":" in name else f"DNS:{name}"
        for name in names)


class CertificateAuthority:
    """
    A CA in C{directory}: C{ca.pem} and its key; L{issue} signs leaves.
    """

    def __init__(self, directory: str, name: str = "lbtwist test CA") -> None:
        self.directory = directory
        self.cert = os.path.join(directory, f"{name.replace(' ', '-')}.pem")
        self.key = os.path.join(directory, f"{name.replace(' ', '-')}.key")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "2",
                "-subj", f"/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, stem: str, names: list[str], client: bool = False) -> tuple[str, str]:
        """
        A certificate for C{names} (the first is its CN) signed by this CA,
        for a server (or a client); return the paths of it and its key.
        """
        cert = os.path.join(self.directory, f"{stem}.pem")
        key = os.path.join(self.directory, f"{stem}.key")
        request = os.path.join(self.directory, f"{stem}.csr")
        extensions = os.path.join(self.directory, f"{stem}.ext")
        with open(extensions, "w") as f:
            f.write(f"subjectAltName={_altNames(names)}\n"
                    f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}\n")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", key, "-out", request, "-subj", f"/CN={names[0]}")
        openssl("x509", "-req", "-in", request, "-CA", self.cert, "-CAkey", self.key,
                "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extensions)
        return cert, key


def selfSigned(directory: str, stem: str, names: list[str]) -> tuple[str, str]:
    """
    A self-signed certificate for C{names}; return the paths of it and its key.
    """
    cert = os.path.join(directory, f"{stem}.pem")
    key = os.path.join(directory, f"{stem}.key")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={names[0]}",
            "-addext", f"subjectAltName={_altNames(names)}")
    return cert, key


def expired(directory: str, stem: str, name: str) -> tuple[str, str, datetime.datetime]:
    """
    A self-signed certificate for C{name} that expired yesterday; return
    the paths of it and its key, and its end date.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    notAfter = now - datetime.timedelta(days=1)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30)).not_valid_after(notAfter)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert = os.path.join(directory, f"{stem}.pem")
    keyPath = os.path.join(directory, f"{stem}.key")
    with open(cert, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(keyPath, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert, keyPath, notAfter
