"""All X.509 building and reading: certificates, CRLs, CSRs. Nothing else imports `cryptography.x509`
to make things (readers for ``pki show`` live here too)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import NameOID, ObjectIdentifier

from .keytypes import KeyType, key_type_of, signature_hash
from .model import REVOCATION_REASONS, Entry, Kind, parse_time
from .names import EXTENDED_USAGES, KEY_USAGES, Host, certificate_usages, classify_host, constraint_kind

__all__ = [
    "build_certificate", "build_crl", "load_certificate", "pem", "crl_pem", "fingerprint",
    "ski_hex", "ski_of", "CsrInfo", "load_csr", "describe", "PRIVATE_KEY_RE", "holds_private_key",
    "build_name", "public_key_der", "prove_key", "der_to_pem", "sign_crl", "read_crl", "pem_to_der",
    "RecordedFacts", "recorded_facts", "CrlFacts", "crl_facts",
]

#: how far back not_before is set, like CFSSL: tolerates clocks a few minutes behind
BACKDATE = dt.timedelta(minutes=5)

_ATTR_OID = {"C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
             "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
             "CN": NameOID.COMMON_NAME}
_OID_ATTR = {v: k for k, v in _ATTR_OID.items()}
_REASON_FLAGS = {
    "unspecified": x509.ReasonFlags.unspecified, "key_compromise": x509.ReasonFlags.key_compromise,
    "ca_compromise": x509.ReasonFlags.ca_compromise, "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded, "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "certificate_hold": x509.ReasonFlags.certificate_hold,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn, "aa_compromise": x509.ReasonFlags.aa_compromise,
}
assert set(_REASON_FLAGS) == set(REVOCATION_REASONS)

PRIVATE_KEY_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----")


def holds_private_key(data: bytes) -> bool:
    """PEM private keys of any kind (PKCS#8, encrypted, RSA, EC, OpenSSH), and DER private keys."""
    if PRIVATE_KEY_RE.search(data):
        return True
    if data[:1] != b"\x30" or len(data) > 16384:
        return False
    try:
        serialization.load_der_private_key(data, password=None)
        return True
    except TypeError:
        return True  # an encrypted PKCS#8 key: still key material
    except Exception:  # noqa: BLE001 - ValueError, UnsupportedAlgorithm: not a key
        return False


@functools.lru_cache(maxsize=4096)
def _cached_name(subject: tuple[tuple[str, str], ...], common_name: str | None) -> x509.Name:
    return build_name(subject, common_name)


def build_name(subject: Iterable[tuple[str, str]], common_name: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(_ATTR_OID[k], v) for k, v in subject]
    if common_name:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _san(hosts: Sequence[Host]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for kind, value in hosts:
        if kind == "ip":
            out.append(x509.IPAddress(ipaddress.ip_address(value)))
        elif kind == "email":
            out.append(x509.RFC822Name(value))
        elif kind == "uri":
            out.append(x509.UniformResourceIdentifier(value))
        else:
            out.append(x509.DNSName(value))
    return out


def _name_constraint_subtrees(values: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for v in values:
        kind, parsed = constraint_kind(v)
        if kind == "ip":
            out.append(x509.IPAddress(parsed))  # type: ignore[arg-type]
        elif kind == "email":
            out.append(x509.RFC822Name(str(parsed).lstrip("@")))
        elif kind == "uri":
            out.append(x509.UniformResourceIdentifier(str(parsed)))
        else:
            out.append(x509.DNSName(str(parsed)))  # RFC 5280 form: no leading dot
    return out


@functools.lru_cache(maxsize=256)
def _key_usage(usages: tuple[str, ...]) -> x509.KeyUsage | None:
    flags = {attr: False for attr in set(KEY_USAGES.values())}
    any_set = False
    for u in usages:
        if u in KEY_USAGES:
            flags[KEY_USAGES[u]] = True
            any_set = True
    if not any_set:
        return None
    if not flags["key_agreement"]:
        flags["encipher_only"] = flags["decipher_only"] = False
    return x509.KeyUsage(**flags)


@functools.lru_cache(maxsize=256)
def _extended_usage(usages: tuple[str, ...]) -> x509.ExtendedKeyUsage | None:
    oids = [ObjectIdentifier(EXTENDED_USAGES[u]) for u in usages if u in EXTENDED_USAGES]
    return x509.ExtendedKeyUsage(oids) if oids else None


def build_certificate(
    entry: Entry,
    *,
    public_key: CertificateIssuerPublicKeyTypes,
    signer: CertificateIssuerPrivateKeyTypes,
    issuer_cert: x509.Certificate | None,
    now: dt.datetime,
    not_after: dt.datetime,
    subject: x509.Name | None = None,
    hosts: Sequence[Host] | None = None,
    ski: bytes | None = None,
    key_type: KeyType | None = None,
) -> x509.Certificate:
    """The certificate for ``entry``; ``issuer_cert`` None makes it self-signed by ``signer``.

    ``subject``/``hosts`` override the entry's (a CSR's exact subject, once checked equal); ``ski``
    is ``public_key``'s key identifier when the caller has it already (`ski_hex`). The usages are the
    entry's that ``public_key``'s type can have (`names.certificate_usages`, as the planner decides);
    ``key_type`` is that type when ``public_key`` only stands in for a key of it (the lint gate's
    throwaway keys: one small RSA key for every RSA size).
    """
    name = subject if subject is not None else _cached_name(entry.subject, entry.common_name)
    issuer_name = issuer_cert.subject if issuer_cert is not None else name
    is_ca = entry.kind is Kind.AUTHORITY
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=entry.path_length if is_ca else None),
                       critical=True)
    )
    usages = certificate_usages(entry.usages, listed_key=entry.key, key=key_type or key_type_of(public_key),
                                csr=entry.csr is not None)[0]
    ku = _key_usage(usages)
    if ku is not None:
        b = b.add_extension(ku, critical=True)
    eku = _extended_usage(usages)
    if eku is not None and not is_ca:  # RFC 3161 §2.3: a time-stamping EKU is critical
        b = b.add_extension(eku, critical="timestamping" in usages)
    b = b.add_extension(x509.SubjectKeyIdentifier(ski) if ski is not None
                        else x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer_cert is not None:
        b = b.add_extension(_authority_key_id(issuer_cert), critical=False)
    sans = _san(hosts if hosts is not None else entry.hosts)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=len(name) == 0)
    nc = entry.name_constraints
    if is_ca and nc is not None:
        b = b.add_extension(x509.NameConstraints(
            permitted_subtrees=_name_constraint_subtrees(nc.permitted) or None,
            excluded_subtrees=_name_constraint_subtrees(nc.excluded) or None), critical=True)
    if entry.issuer_crl_url and issuer_cert is not None:
        b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(entry.issuer_crl_url)],
            relative_name=None, reasons=None, crl_issuer=None)]), critical=False)
    return b.sign(signer, _hash_for(signer))


@functools.lru_cache(maxsize=64)
def ski_of(cert: x509.Certificate) -> bytes:
    """The certificate's subject key identifier: its extension, else computed from its public key."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # type: ignore[arg-type]


@functools.lru_cache(maxsize=64)
def _authority_key_id(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = x509.SubjectKeyIdentifier(ski_of(issuer_cert))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


_HASHES: dict[int, tuple[Any, Any]] = {}


def _hash_for(signer: Any) -> Any:
    """The signature hash for ``signer``, remembered per signer object (one issuer signs many)."""
    hit = _HASHES.get(id(signer))
    if hit is None or hit[0] is not signer:
        if len(_HASHES) > 256:
            _HASHES.clear()
        hit = (signer, signature_hash(signer.public_key()))
        _HASHES[id(signer)] = hit
    return hit[1]


def build_crl(
    issuer_cert: x509.Certificate,
    signer: CertificateIssuerPrivateKeyTypes,
    revocations: Iterable[Mapping[str, Any]],
    *,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
) -> x509.CertificateRevocationList:
    """A CRL with CRL number and authority key identifier; ``revocations`` as in the inventory."""
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    except x509.ExtensionNotFound:
        pass
    for r in revocations:
        rb = (x509.RevokedCertificateBuilder().serial_number(int(r["serial"], 16))
              .revocation_date(parse_time(r["date"])))
        reason = r.get("reason", "unspecified")
        if reason != "unspecified":
            rb = rb.add_extension(x509.CRLReason(_REASON_FLAGS[reason]), critical=False)
        b = b.add_revoked_certificate(rb.build())
    return b.sign(signer, signature_hash(signer.public_key()))


def sign_crl(issuer_cert: x509.Certificate, signer: CertificateIssuerPrivateKeyTypes,
             revocations: Sequence[Mapping[str, Any]], *, number: int, now: dt.datetime,
             validity: int) -> tuple[bytes, dict[str, Any]]:
    """The CRL as PEM, and what the inventory records of it (number, times, digest, validity)."""
    from .model import format_time

    next_update = now + dt.timedelta(seconds=validity)
    crl = build_crl(issuer_cert, signer, revocations, number=number, this_update=now, next_update=next_update)
    info = {"number": number, "this_update": format_time(now), "next_update": format_time(next_update),
            "sha256": hashlib.sha256(crl.public_bytes(serialization.Encoding.DER)).hexdigest(),
            "validity": validity, "revoked": len(revocations)}
    return crl_pem(crl), info


def read_crl(data: bytes, issuer_cert: x509.Certificate) -> tuple[int, list[dict[str, Any]]]:
    """An existing CRL of ``issuer_cert`` (PEM or DER): its number and its revocations, as the inventory
    keeps them. ValueError when it is not a CRL, or not signed by that issuer."""
    from .model import format_time

    crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
    if crl.issuer != issuer_cert.subject or not crl.is_signature_valid(issuer_cert.public_key()):  # type: ignore[arg-type]
        raise ValueError("it is not signed by that authority")
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        number = 0
    names = {flag: name for name, flag in _REASON_FLAGS.items()}
    revocations = []
    for entry in crl:
        try:
            reason = names.get(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason, "unspecified")
        except x509.ExtensionNotFound:
            reason = "unspecified"
        revocations.append({"serial": format(entry.serial_number, "x"), "date": format_time(entry.revocation_date_utc),
                            "reason": reason, "name": None})
    return number, revocations


def load_certificate(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def pem_to_der(data: bytes, label: bytes = b"CERTIFICATE") -> bytes | None:
    """The DER of the one ``label`` PEM block in ``data`` (text before its BEGIN line allowed, as RFC
    7468 says), or None when ``data`` is not exactly that: the bytes a SHA-256 binding is checked on."""
    import base64
    import binascii

    begin = b"-----BEGIN " + label + b"-----"
    start = data.find(begin)
    if start < 0 or (start and data[start - 1:start] != b"\n") or data.count(b"-----BEGIN ") != 1:
        return None
    lines = data[start:].strip().splitlines()
    if len(lines) < 3 or lines[-1] != b"-----END " + label + b"-----":
        return None
    try:
        return base64.b64decode(b"".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class RecordedFacts:
    """What an inventory object says of its certificate, as read from the certificate itself."""

    serial: int
    subject_parts: tuple[str, ...]  # sorted "LABEL=value"
    subject: x509.Name
    ski: bytes
    aki: bytes | None
    public_key_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime


#: RFC 4514 labels of the attributes pki.toml writes; others by their dotted OID, as cryptography does
_LABELS = {NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.LOCALITY_NAME: "L",
           NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN"}


def recorded_facts(cert: x509.Certificate) -> RecordedFacts:
    """The fields of ``cert`` an inventory object records, each parsed once (`Project.verify_state`)."""
    subject = cert.subject
    ski = aki = None
    for ext in cert.extensions:
        if isinstance(ext.value, x509.SubjectKeyIdentifier):
            ski = ext.value.digest
        elif isinstance(ext.value, x509.AuthorityKeyIdentifier):
            aki = ext.value.key_identifier
    public_key = cert.public_key()
    if ski is None:
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key).digest  # type: ignore[arg-type]
    parts = tuple(sorted(f"{_LABELS.get(a.oid) or a.rfc4514_attribute_name}={a.value}" for a in subject))
    return RecordedFacts(cert.serial_number, parts, subject, ski, aki,
                         hashlib.sha256(public_key_der(public_key)).hexdigest(),  # type: ignore[arg-type]
                         cert.not_valid_before_utc, cert.not_valid_after_utc)


@dataclasses.dataclass(frozen=True)
class CrlFacts:
    """What an inventory records of a CRL, as read from the CRL file (`Project.verify_state`)."""

    number: int
    this_update: dt.datetime
    next_update: dt.datetime | None
    revoked: Mapping[int, tuple[str, dt.datetime]]  # serial -> (reason, revocation date)


def crl_facts(der: bytes, issuer_cert: x509.Certificate) -> CrlFacts:
    """The CRL in ``der``, checked to be ``issuer_cert``'s (issuer name, signature under its public
    key): its number, times and revoked serials. ValueError when it is not that authority's CRL."""
    crl = x509.load_der_x509_crl(der)
    if crl.issuer != issuer_cert.subject:
        raise ValueError(f"it is issued by {crl.issuer.rfc4514_string()!r}, not by the authority")
    try:
        valid = crl.is_signature_valid(issuer_cert.public_key())  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - a key type that cannot sign CRLs: not its CRL either
        valid = False
    if not valid:
        raise ValueError("its signature does not verify under the authority's certificate")
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        number = 0
    names = {flag: name for name, flag in _REASON_FLAGS.items()}
    revoked: dict[int, tuple[str, dt.datetime]] = {}
    for entry in crl:
        try:
            reason = names.get(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason, "unspecified")
        except x509.ExtensionNotFound:
            reason = "unspecified"
        revoked[entry.serial_number] = (reason, entry.revocation_date_utc)
    return CrlFacts(number, crl.last_update_utc, crl.next_update_utc, revoked)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der_to_pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    """PEM from DER without a second encoding pass through the library."""
    import base64

    b64 = base64.encodebytes(der).replace(b"\n", b"")
    body = b"\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label.encode(), body, label.encode())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def ski_hex(public_key: CertificateIssuerPublicKeyTypes) -> str:
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()


def public_key_der(public_key: CertificateIssuerPublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def prove_key(signer: CertificateIssuerPrivateKeyTypes, public_key: CertificateIssuerPublicKeyTypes, *,
              what: str) -> None:
    """Prove ``signer`` holds the private half of ``public_key`` (e.g. a certificate's) by signing."""
    from .errors import SigningError

    csr = x509.CertificateSigningRequestBuilder().subject_name(build_name((), "pkiascode key proof")) \
        .sign(signer, signature_hash(public_key))
    if public_key_der(csr.public_key()) != public_key_der(public_key):
        raise SigningError(f"{what}: the key's public half does not match the certificate")
    if not csr.is_signature_valid:
        raise SigningError(f"{what}: the key does not sign for the certificate's public key")


# --- CSRs -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CsrInfo:
    """What a CSR file holds that a certificate is made from."""

    digest: str  # sha256 of the public key (a new key in the CSR → rekey)
    public_key: Any
    subject: x509.Name
    attributes: tuple[tuple[str, str], ...]  # in order, CN included
    hosts: tuple[Host, ...]

    @property
    def key_type(self) -> KeyType:
        """What decides its certificate's usages (the planner's ``csr_key_types``)."""
        return key_type_of(self.public_key)


def load_csr(data: bytes) -> CsrInfo:
    """Parse and check a CSR (PEM or DER). ValueError with a reason when it is not acceptable."""
    try:
        csr = x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
    except ValueError as e:
        raise ValueError(f"not a valid certificate signing request ({e})") from None
    if not csr.is_signature_valid:
        raise ValueError("its signature does not verify: the requester must sign it with the key it requests for")
    attrs = []
    for attr in csr.subject:
        short = _OID_ATTR.get(attr.oid)
        if short is None:
            raise ValueError(f"subject attribute {attr.oid.dotted_string} is not supported")
        attrs.append((short, str(attr.value)))
    hosts: list[Host] = []
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for gn in san:
            value = str(gn.value)
            hosts.append(classify_host(value))
    except x509.ExtensionNotFound:
        pass
    key = csr.public_key()
    key_type_of(key)  # raises for unsupported keys
    return CsrInfo(hashlib.sha256(public_key_der(key)).hexdigest(), key, csr.subject, tuple(attrs), tuple(hosts))


# --- reading for `pki show` -------------------------------------------------------------------

def describe(cert: x509.Certificate) -> dict[str, Any]:
    """Everything ``pki show`` prints about a certificate, as plain data."""
    info: dict[str, Any] = {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "sha256": fingerprint(cert),
        "sha1": cert.fingerprint(hashes.SHA1()).hex(),
        "key": key_type_of(cert.public_key()).value,
        "signature_algorithm": cert.signature_algorithm_oid._name,
        "sans": [], "usages": [], "extended_usages": [], "ca": False, "path_length": None,
    }
    for ext in cert.extensions:
        v = ext.value
        if isinstance(v, x509.SubjectAlternativeName):
            label = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.RFC822Name: "email",
                     x509.UniformResourceIdentifier: "URI"}
            info["sans"] = [f"{label.get(type(g), type(g).__name__)}:{g.value}" for g in v]
        elif isinstance(v, x509.KeyUsage):
            names = {val: key for key, val in KEY_USAGES.items() if key not in ("signing", "non repudiation")}
            info["usages"] = [n for attr, n in sorted(names.items())
                              if not (attr in ("encipher_only", "decipher_only") and not v.key_agreement)
                              and getattr(v, attr)]
        elif isinstance(v, x509.ExtendedKeyUsage):
            rev = {oid: name for name, oid in EXTENDED_USAGES.items() if name not in ("s/mime",)}
            info["extended_usages"] = [rev.get(o.dotted_string, o.dotted_string) for o in v]
        elif isinstance(v, x509.BasicConstraints):
            info["ca"], info["path_length"] = v.ca, v.path_length
        elif isinstance(v, x509.SubjectKeyIdentifier):
            info["ski"] = v.digest.hex()
        elif isinstance(v, x509.AuthorityKeyIdentifier) and v.key_identifier:
            info["aki"] = v.key_identifier.hex()
        elif isinstance(v, x509.NameConstraints):
            info["name_constraints"] = {
                "permitted": [str(g.value) for g in v.permitted_subtrees or []],
                "excluded": [str(g.value) for g in v.excluded_subtrees or []]}
        elif isinstance(v, x509.CRLDistributionPoints):
            info["crl_urls"] = [str(n.value) for dp in v for n in (dp.full_name or [])]
    return info

