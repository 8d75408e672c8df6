"""The lint gate: pkilint's RFC 5280 certificate and CRL linters over what a plan would sign.

Each certificate the plan signs is built as apply would build it (`pkiascode.x509.build_certificate`),
from the same entry, with a throwaway key of the same algorithm (one per algorithm per run) in place
of keys that do not exist yet or that plan must not touch; a CSR entry gets its CSR's public key.
Each CRL the plan re-signs is built the same way. Nothing is linted when the plan signs nothing, so
a no-op plan costs nothing more.

Every certificate goes through pkilint, but not every part of every certificate needs the whole
walk (`_shape`). Certificates built in one plan differ, within a group of one *shape*, only in:
their serial number (random), their signature value, the values of their subject attributes and
the values of their SAN entries. Everything else is the same DER: version, signature algorithm,
issuer, the validity instants (one ``now`` per plan; the shape has them), the public key (the same
throwaway key per algorithm; a CSR's own key makes its own shape), and every other extension with
its criticality and place. So the first certificate of a shape is linted whole, and each other one
is decoded by pkilint and validated, with pkilint's own validators, on the nodes in which it
differs: the serial number, the subject and the SAN extension (the decoders, then the subject and
extension validator containers and the certificate-level validators, on those subtrees). Its
findings are those, plus the first one's findings on every other node. That is the same set as a
whole walk because pkilint's PKIX validators outside those subtrees read nothing inside them but
whether the subject equals the issuer (`is_self_issued`, for the AKI rule; in the shape) and
whether the subject is empty (in the shape); the validators that compare the subject with the SAN
(criticality, e-mail in SAN) sit on those subtrees and run for each certificate. The signature value
is read only to verify a self-issued certificate's own signature, which every certificate of a
shape makes with the same throwaway key over its own TBS, so it answers alike. tests/test_lint.py
checks that the findings equal a whole walk's, and that a bad value in the 500th of 1,000
otherwise identical leaves is found.

The throwaway key of every RSA size is an RSA-1024 key, the smallest `cryptography` makes: pkiascode
signs with SHA-256 whatever the RSA size, and pkilint's RFC 5280 validators read an RSA key's modulus
only to verify a signature, never its length (`pkilint.pkix.key`; an RSA-1024 key takes ~15 ms to
make, an RSA-2048 key ~100 ms, an RSA-4096 key a second or more). tests/test_lint.py checks that a
certificate with RSA findings lints the same with a real RSA key as with the stand-in.

pkilint also reports as errors names that RFC 5280 allows but the public Web does not, which is wrong
for a private PKI: `PRIVATE_PKI_FILTER` drops those, each for the values it is wrong about only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .keytypes import KeyType, generate_private_key
from .model import Desired, Entry, Kind, format_time
from .names import classify_host
from .plan import Action, Finding, Plan

if TYPE_CHECKING:
    from cryptography import x509

    from .x509 import CsrInfo

__all__ = ["lint_plan", "with_findings", "refusal", "lint_certificate", "lint_crl", "PRIVATE_PKI_FILTER"]

def _single_label(value: str) -> bool:
    return "." not in value and classify_host(value) == ("dns", value.lower())


def _private_dns(value: str) -> bool:
    # a single label, or a wildcard leftmost label over a name pkilint takes
    import validators

    return _single_label(value) or (value.startswith("*.") and classify_host(value)[0] == "dns"
                                    and (_single_label(value[2:]) or bool(validators.domain(value[2:]))))


def _private_uri(value: str) -> bool:
    # what pkilint checks, once the scheme is https and a single-label host has a dot; in a name
    # constraint the value is a host (".example.com", "trust-domain")
    import validators

    if "://" not in value:
        return _single_label(value.lstrip("."))
    parts = urlsplit(value)
    if classify_host(value)[0] != "uri" or not parts.hostname:
        return False
    host = parts.hostname + (".example" if _single_label(parts.hostname) else "")
    return bool(validators.url(urlunsplit(("https", host + (f":{parts.port}" if parts.port else ""),
                                           parts.path, parts.query, parts.fragment))))


def _private_mailbox(value: str) -> bool:
    # what pkilint checks, once a single-label domain has a dot
    import validators

    local, _, domain = value.rpartition("@")
    return bool(local) and _single_label(domain) and bool(validators.email(f"{local}@{domain}.example"))


#: pkilint finding id → (why it is wrong for a private PKI, which values it is wrong for). pkilint
#: checks names against the public DNS; RFC 5280 §4.2.1.6 does not. tests/test_lint.py tests each.
PRIVATE_PKI_FILTER: Mapping[str, tuple[str, Callable[[str], bool]]] = {
    "pkix.invalid_domain_name_syntax": (
        "a single-label DNS name (kubernetes, node-0) is a legal dNSName, and so is a wildcard leftmost "
        "label (*.example.com, RFC 6125 §6.4.3; RFC 5280 leaves wildcards to the application)", _private_dns),
    "pkix.invalid_uri_syntax": (
        "a URI of any scheme (spiffe://) or with a single-label host is a legal URI", _private_uri),
    "pkix.invalid_email_address_syntax": (
        "a mailbox at a single-label domain (root@node-0) is a legal rfc822Name", _private_mailbox),
}

#: what a plan shows; pkilint's INFO (e.g. how a key identifier was computed) and DEBUG are left out
_SEVERITIES = ("FATAL", "ERROR", "WARNING", "NOTICE")


#: the size of the throwaway RSA key that stands in for every RSA size (module docstring)
STAND_IN_RSA_BITS = 1024


@functools.cache
def _throwaway_key(algorithm: str) -> Any:
    """A throwaway key: ``"rsa"`` (of `STAND_IN_RSA_BITS`), else of the `KeyType` of that value."""
    if algorithm == "rsa":
        from cryptography.hazmat.primitives.asymmetric import rsa

        return rsa.generate_private_key(public_exponent=65537, key_size=STAND_IN_RSA_BITS)
    return generate_private_key(KeyType(algorithm))


def _signing_key(key_type: KeyType) -> Any:
    """A throwaway key of ``key_type``'s algorithm: an RSA key of any size signs with SHA-256 and
    pkilint does not read an RSA modulus's length, so one small RSA key stands in for all."""
    return _throwaway_key("rsa" if key_type.is_rsa else key_type.value)


@functools.cache
def _validators() -> tuple[Any, Any, Any, Any]:
    """pkilint's certificate and CRL validators; then, for `_lint_certificate`'s parts, a container of
    the certificate decoders and the extensions container (the same objects as inside the first)."""
    from pkilint import pkix, validation
    from pkilint.pkix import certificate, crl, extension, name

    decoders = certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS)
    extensions = certificate.create_extensions_validator_container([])
    cert_validator = certificate.create_pkix_certificate_validator_container(
        decoders,
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            extensions,
            certificate.create_spki_validator_container([]),
        ],
    )
    crl_validator = crl.create_pkix_crl_validator_container(
        [pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
         pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS)],
        [crl.create_issuer_validator_container([]), crl.create_validity_validator_container([]),
         crl.create_extensions_validator_container([])],
    )
    return cert_validator, crl_validator, validation.ValidatorContainer(validators=decoders), extensions


def _findings(results: Iterable[Any], entry: str, what: str, *, unfiltered: bool) -> list[tuple[str, Finding]]:
    """(node path, finding) of each result worth showing."""
    out = []
    for result in results:
        for fd in result.finding_descriptions:
            code, severity = fd.finding.code, fd.finding.severity.name
            if severity not in _SEVERITIES or (not unfiltered and _filtered(code, result.node)):
                continue
            message = fd.message or code
            out.append((result.node.path, Finding(code, severity, entry, what, f"{message} (at {result.node.path})")))
    return out


def _filtered(code: str, node: Any) -> bool:
    rule = PRIVATE_PKI_FILTER.get(code)
    if rule is None:
        return False
    try:
        return rule[1](str(node.pdu))
    except ValueError:
        return False  # not even a name pkiascode accepts: keep the finding


def lint_certificate(der: bytes, *, entry: str = "", unfiltered: bool = False) -> list[Finding]:
    """pkilint's RFC 5280 findings on one DER certificate (NOTICE and above), less the built-in filter."""
    return [f for _, f in _lint_certificate(der, entry, unfiltered, None)]


@dataclasses.dataclass(frozen=True)
class _Linted:
    """A whole walk's findings on a certificate, by node path."""

    findings: tuple[tuple[str, Finding], ...]


def _lint_certificate(der: bytes, entry: str, unfiltered: bool, like: _Linted | None) -> list[tuple[str, Finding]]:
    """(node path, finding) on one certificate: a whole walk, or (``like``: the whole walk of a
    certificate of the same `_shape`, with the same ``unfiltered``) a walk of the parts in which the two
    differ, and ``like``'s findings elsewhere."""
    validator = _validators()[0]  # (the first call imports pkilint)
    from pkilint import loader
    from pyasn1_alt_modules import rfc5280

    doc = loader.RFC5280CertificateDocumentLoader().load_der_document(der, entry or "certificate")
    if like is None:
        return _findings(validator.validate(doc.root), entry, "certificate", unfiltered=unfiltered)
    _, _, decoding, extension_validator = _validators()
    own = [doc.root.navigate("tbsCertificate.serialNumber"), doc.root.navigate("tbsCertificate.subject")]
    results = []
    for node in own:  # (the subject container matches the subject node by its path)
        results += decoding.validate(node) + validator.validate(node)
    san = doc.get_extension_by_oid(rfc5280.id_ce_subjectAltName)
    if san is not None:  # (the extensions container matches the list of extensions, not one: called here)
        own.append(san[0])
        results += decoding.validate(san[0]) + extension_validator.validate(san[0]) + validator.validate(san[0])
    mine = {node.path for node in own}

    def inside(path: str) -> bool:
        return any(path == p or path.startswith(p + ".") for p in mine)

    theirs = [(path, dataclasses.replace(f, entry=entry)) for path, f in like.findings if not inside(path)]
    return theirs + _findings(results, entry, "certificate", unfiltered=unfiltered)


def _shape(cert: "x509.Certificate") -> tuple[Any, ...]:
    """All of ``cert`` but its serial number, signature value, subject values and SAN values."""
    from cryptography import x509 as cx509

    from .x509 import public_key_der

    extensions = []
    for ext in cert.extensions:
        if isinstance(ext.value, cx509.SubjectAlternativeName):
            extensions.append((ext.oid.dotted_string, ext.critical, tuple(type(g).__name__ for g in ext.value)))
        else:
            extensions.append((ext.oid.dotted_string, ext.critical, ext.value.public_bytes()))
    subject = cert.subject
    # (the signature algorithm's parameters follow from its OID for every algorithm pkiascode signs with)
    return (cert.version.value, cert.signature_algorithm_oid.dotted_string,
            cert.issuer.public_bytes(), cert.not_valid_before_utc, cert.not_valid_after_utc,
            public_key_der(cert.public_key()),  # type: ignore[arg-type]
            tuple(tuple(a.oid.dotted_string for a in rdn) for rdn in subject.rdns),
            subject.public_bytes() == cert.issuer.public_bytes(), tuple(extensions))


def lint_crl(der: bytes, *, entry: str = "", unfiltered: bool = False) -> list[Finding]:
    """pkilint's RFC 5280 findings on one DER CRL (NOTICE and above), less the built-in filter."""
    from pkilint import loader

    doc = loader.RFC5280CertificateListDocumentLoader().load_der_document(der, entry or "crl")
    return [f for _, f in _findings(_validators()[1].validate(doc.root), entry, "crl", unfiltered=unfiltered)]


def lint_plan(desired: Desired, plan: Plan, *, csr_public_keys: Mapping[str, Any] | None = None,
              csr_subjects: Mapping[str, "x509.Name"] | None = None) -> tuple[Finding, ...]:
    """Findings on every certificate and CRL ``plan`` would sign (none when it signs nothing)."""
    from cryptography.hazmat.primitives import serialization

    from . import x509 as x

    csr_public_keys = csr_public_keys or {}
    csr_subjects = csr_subjects or {}
    signs = [c for c in plan.changes if c.makes_certificate]
    revoked_under: dict[str, list[str]] = {}
    for c in plan.changes:
        if c.action is Action.REVOKE and c.revoke_reason:
            issuer = desired.entries[c.name].issuer if c.name in desired.entries else None
            if issuer:
                revoked_under.setdefault(issuer, []).append(c.revoke_reason)
    crls = {c.name for c in plan.changes if c.action is Action.UPDATE_CRL}
    crls |= {c.name for c in signs if c.kind is Kind.AUTHORITY} | set(revoked_under)
    if not signs and not crls:
        return ()

    now = plan.at
    stand_ins: dict[str, Any] = {}  # authority name → its certificate, with its throwaway signing key

    def stand_in(name: str) -> Any:
        if name not in stand_ins:
            entry = desired.entries[name]
            issuer = stand_in(entry.issuer) if entry.issuer else None
            key = _signing_key(entry.key)
            stand_ins[name] = _build(entry, issuer, now, public_key=key.public_key(),
                                     signer=key if issuer is None else _signing_key(desired.entries[entry.issuer].key))
        return stand_ins[name]

    findings: list[Finding] = []
    shapes: dict[tuple[Any, ...], _Linted] = {}  # the first certificate of each shape, walked whole
    for change in signs:
        entry = desired.entries[change.name]
        issuer = stand_in(entry.issuer) if entry.issuer else None
        own = _signing_key(entry.key) if entry.name not in csr_public_keys else None
        public_key = own.public_key() if own is not None else csr_public_keys[entry.name]
        signer = own if issuer is None else _signing_key(desired.entries[entry.issuer].key)  # type: ignore[union-attr]
        cert = _build(entry, issuer, now, public_key=public_key, signer=signer, subject=csr_subjects.get(entry.name),
                      stand_in=own is not None)
        der = cert.public_bytes(serialization.Encoding.DER)
        shape = _shape(cert)
        like = shapes.get(shape)
        if like is None:
            found = _lint_certificate(der, entry.name, False, None)
            shapes[shape] = _Linted(tuple(found))
            findings += [f for _, f in found]
        else:
            findings += [f for _, f in _lint_certificate(der, entry.name, False, like)]
    for name in sorted(crls):
        if name not in desired.entries or desired.entries[name].kind is not Kind.AUTHORITY:
            continue
        entry = desired.entries[name]
        revocations = [{"serial": format(i + 1, "x"), "date": format_time(now), "reason": reason}
                       for i, reason in enumerate(revoked_under.get(name, []))]
        crl = x.build_crl(stand_in(name), _signing_key(entry.key), revocations, number=1,
                          this_update=now, next_update=now + dt.timedelta(seconds=entry.crl_validity))
        findings += lint_crl(crl.public_bytes(serialization.Encoding.DER), entry=name)
    return tuple(findings)


def with_findings(desired: Desired, plan: Plan, csrs: Mapping[str, "CsrInfo"]) -> Plan:
    """``plan`` with the findings on what it would sign (``csrs``: the committed CSRs, by entry)."""
    if plan.empty:
        return plan
    findings = lint_plan(desired, plan, csr_public_keys={n: c.public_key for n, c in csrs.items()},
                         csr_subjects={n: c.subject for n, c in csrs.items()})
    return dataclasses.replace(plan, findings=findings)


def refusal(desired: Desired, plan: Plan) -> str | None:
    """Why apply must not sign ``plan`` (its blocking findings, in one line), or None."""
    blocking = plan.blocking(desired)
    if not blocking:
        return None
    first = blocking[0]
    entry = desired.entries.get(first.entry)
    where = entry.qualified if entry is not None else first.entry
    where += "'s CRL" if first.what == "crl" else ""
    more = f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else ""
    return (f"lint: {where}: {first.id}: {first.message}{more}; fix pki.toml, or list the id in "
            "lint_ignore to sign it anyway")


def _build(entry: Entry, issuer_cert: Any, now: dt.datetime, *, public_key: Any, signer: Any,
           subject: Any = None, stand_in: bool = True) -> Any:
    """``entry``'s certificate as apply builds it; ``stand_in``: ``public_key`` is a throwaway key
    for a key of ``entry.key`` (else a CSR's own key)."""
    from . import x509 as x

    not_after = now + dt.timedelta(seconds=entry.validity)
    if issuer_cert is not None:
        not_after = min(not_after, issuer_cert.not_valid_after_utc)
    return x.build_certificate(entry, public_key=public_key, signer=signer, issuer_cert=issuer_cert, now=now,
                               not_after=not_after, subject=subject, key_type=entry.key if stand_in else None)
