"""The CA and serving certificates of the agents' /metrics (docs/operator.md, "Securing /metrics").

Pure functions of their inputs and `now` (the reconciler passes the clock),
with the `cryptography` package: ECDSA P-256 keys, SHA-256 signatures. One CA
per probe, valid ten years, whose key stays in a Secret only the operator
reads; one serving certificate for the probe's Service DNS names, valid one
year and renewed when a third of its life is left, or when its names or CA no
longer match.
"""
from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_WHEN_LEFT = 1 / 3       # of the serving certificate's lifetime
BACKDATE = dt.timedelta(minutes=5)   # tolerate clocks a little behind ours


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _utc(when):
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def new_ca(common_name: str, now: dt.datetime) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a self-signed CA."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def new_serving(ca_cert_pem: bytes, ca_key_pem: bytes, dns_names: list[str],
                now: dt.datetime) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `dns_names`, signed by the CA."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = _key()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=SERVING_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def not_after(cert_pem: bytes) -> dt.datetime:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return _utc(getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after)


def renew_at(cert_pem: bytes) -> dt.datetime:
    cert = x509.load_pem_x509_certificate(cert_pem)
    start = _utc(getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before)
    end = not_after(cert_pem)
    return end - (end - start) * RENEW_WHEN_LEFT


def ca_problem(ca_cert_pem: bytes | None, ca_key_pem: bytes | None, now: dt.datetime) -> str | None:
    """Why the stored CA cannot be used (None: it can)."""
    if not ca_cert_pem or not ca_key_pem:
        return "no CA yet"
    try:
        cert = x509.load_pem_x509_certificate(ca_cert_pem)
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except ValueError as e:
        return f"unreadable CA: {e}"
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        return "CA key does not match its certificate"
    if not_after(ca_cert_pem) - dt.timedelta(days=SERVING_DAYS) < now:
        return "CA expires within a serving certificate's lifetime"
    return None


def serving_problem(cert_pem: bytes | None, key_pem: bytes | None, ca_cert_pem: bytes,
                    dns_names: list[str], now: dt.datetime) -> str | None:
    """Why the stored serving certificate must be replaced (None: keep it)."""
    if not cert_pem or not key_pem:
        return "no serving certificate yet"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError as e:
        return f"unreadable certificate: {e}"
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        return "key does not match the certificate"
    if cert.issuer != ca.subject:
        return "not issued by the current CA"
    try:
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                               ec.ECDSA(cert.signature_hash_algorithm))
    except Exception:   # InvalidSignature, or a CA key of another type
        return "not signed by the current CA"
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative names"
    if sorted(names.get_values_for_type(x509.DNSName)) != sorted(dns_names):
        return "DNS names changed"
    if renew_at(cert_pem) <= now:
        return "due for renewal"
    return None
