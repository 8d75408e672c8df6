"""Read-only views of state for ``pki list``, ``pki show`` and ``pki export``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .backend import KeyRef
from .errors import ConfigError, KeyNotExportable, PkiError
from .model import CSR_STORE, Kind, Record, format_time
from .names import did_you_mean
from .project import Project
from .state import StateDir, atomic_write

__all__ = ["list_rows", "show", "export", "status_of", "chain_names", "describe_file"]

_DEFAULT_RENEW_BEFORE = 30 * 86400


def status_of(rec: Record, at: dt.datetime, renew_before: int) -> str:
    if rec.revoked:
        return "revoked"
    if at >= rec.not_after:
        return "expired"
    if at >= rec.not_after - dt.timedelta(seconds=renew_before):
        return "renew_due"
    return "ok"


def _renew_before(project: Project) -> dict[str, int]:
    try:
        return {n: e.renew_before for n, e in project.desired().entries.items()}
    except ConfigError:
        return {}  # list still works from state when pki.toml is broken


def list_rows(project: Project, at: dt.datetime) -> list[dict[str, Any]]:
    renew = _renew_before(project)
    try:
        state = project.state
    except ConfigError as e:  # pki.toml is broken: the inventory still answers, from the default place
        import sys

        print(f"warning: {e}; listing state/ as it is", file=sys.stderr)
        state = StateDir(project.base_dir, "state", project.work_dir)
    _, records = state.load()
    rows = []
    for rec in sorted(records.values(), key=lambda r: (r.kind is Kind.CERTIFICATE, r.name)):
        left = (rec.not_after - at).total_seconds() / 86400
        rows.append({
            "name": rec.name, "kind": rec.kind.value, "issuer": rec.issuer, "subject": rec.subject,
            "serial": rec.serial, "sha256": rec.sha256, "not_before": format_time(rec.not_before),
            "not_after": format_time(rec.not_after), "days_left": int(left // 1),
            "status": status_of(rec, at, renew.get(rec.name, _DEFAULT_RENEW_BEFORE)),
            "backend": rec.store, "key": rec.key_type,
            "revoked": dict(rec.revoked) if rec.revoked else None,
        })
    return rows


def chain_names(records: Mapping[str, Record], name: str) -> list[str]:
    out, seen = [], {name}
    rec = records[name]
    while rec.issuer and rec.issuer in records and rec.issuer not in seen:
        seen.add(rec.issuer)
        out.append(rec.issuer)
        rec = records[rec.issuer]
    return out


def _lookup(records: Mapping[str, Record], name: str) -> Record:
    rec = records.get(name)
    if rec is None:
        raise PkiError(f"{name!r} is not in state{did_you_mean(name, records)}; run `pki apply` first"
                       if records else f"{name!r} is not in state: nothing has been applied yet")
    return rec


def show(project: Project, name: str) -> dict[str, Any]:
    from .x509 import describe, load_certificate

    state = project.state
    _, records = state.load()
    rec = _lookup(records, name)
    try:
        info = describe(load_certificate(state.cert_path(name).read_bytes()))
    except (FileNotFoundError, ValueError):
        raise PkiError(f"{state.rel}/certs/{name}.pem is missing or damaged; `pki plan` shows the repair") \
            from None
    info.update({
        "name": rec.name, "kind": rec.kind.value, "issuer_name": rec.issuer,
        "chain": chain_names(records, name), "backend": rec.store, "key_ref": rec.key_id,
        "key_origin": rec.key_origin, "key_exportable": rec.key_exportable, "revoked": rec.revoked,
        "crl": dict(rec.crl) if rec.crl else None, "file": f"{state.rel}/certs/{name}.pem",
    })
    return info


def export(project: Project, name: str, directory: Path, *, no_key: bool) -> list[Path]:
    """Write NAME.pem, NAME-ca.pem and (unless ``no_key``) NAME-key.pem. Checks before writing."""
    from cryptography.hazmat.primitives import serialization

    state = project.state
    project.observe(check_keys=False)  # state checked, not trusted: files, inventory, chain signatures
    _, records = state.load()
    rec = _lookup(records, name)
    chain = chain_names(records, name) or ([name] if rec.issuer is None else [])
    if rec.issuer and not chain:
        raise PkiError(f"the issuer of {rec.qualified} is not in state")
    try:
        cert = state.cert_path(name).read_bytes()
        ca = b"".join(state.cert_path(n).read_bytes() for n in chain)
    except FileNotFoundError as e:
        raise PkiError(f"{e.filename} is missing; `pki plan` shows the repair") from None

    key_pem = None
    if not no_key and rec.store != CSR_STORE:
        if rec.store not in project.desired().stores:
            raise PkiError(f"the key of {rec.qualified} is in backend {rec.store!r}, which pki.toml no longer defines")
        store = project.store(rec.store)
        ref = KeyRef(rec.store, rec.key_id, rec.key_origin)
        if not store.is_exportable(ref):
            raise KeyNotExportable(f"the key of {rec.qualified} cannot leave backend {rec.store} "
                                   f"({store.plugin}); export the certificate and chain with --no-key")
        key = store.export(ref)
        _require_match(rec, key, cert, f"{state.rel}/certs/{name}.pem")
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())

    written = []
    for fname, data, mode in ((f"{name}.pem", cert, 0o644), (f"{name}-ca.pem", ca, 0o644),
                              (f"{name}-key.pem", key_pem, 0o600)):
        if data is not None:
            atomic_write(directory / fname, data, mode)
            written.append(directory / fname)
    return written


def _require_match(rec: Record, key: Any, cert_pem: bytes, where: str) -> None:
    """Refuse to hand out a key that is not the certificate's (an inventory pointing at another key)."""
    from .x509 import load_certificate, public_key_der

    try:
        cert_key = public_key_der(load_certificate(cert_pem).public_key())
    except ValueError:
        raise PkiError(f"{where} is damaged; `pki plan` shows the repair") from None
    if public_key_der(key.public_key()) != cert_key:
        raise PkiError(f"the key {rec.store}:{rec.key_id} that the inventory names for {rec.qualified} is not the "
                       f"key of {where}; nothing written: restore state/inventory.json from git")


def describe_file(path: Path) -> list[tuple[str, str]]:
    """A certificate or CRL file (PEM or DER) as (label, value) lines, for ``pki show --file`` and git's
    ``textconv`` (diffs of state/crl/*.crl). Text before a PEM block is ignored. A malformed field
    (an extension cryptography parses only when asked) is a one-line `PkiError` naming the file."""
    try:
        return _describe_file(path)
    except ValueError as e:
        raise PkiError(f"{path}: a certificate or CRL with a malformed field ({e})") from None


def _describe_file(path: Path) -> list[tuple[str, str]]:
    from cryptography import x509

    from .x509 import describe

    try:
        data = path.read_bytes()
    except OSError as e:
        raise PkiError(f"{path}: {e.strerror}") from None
    if b"-----BEGIN X509 CRL-----" in data or b"-----BEGIN CERTIFICATE-----" not in data and not _is_cert_der(data):
        try:
            crl = (x509.load_pem_x509_crl(data[data.index(b"-----BEGIN X509 CRL-----"):])
                   if b"-----BEGIN X509 CRL-----" in data else x509.load_der_x509_crl(data))
        except ValueError as e:
            raise PkiError(f"{path} is not a certificate or CRL ({e})") from None
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number \
            if any(isinstance(e.value, x509.CRLNumber) for e in crl.extensions) else None
        lines = [("CRL of", crl.issuer.rfc4514_string()), ("Number", str(number) if number is not None else "-"),
                 ("This update", crl.last_update_utc.isoformat()),
                 ("Next update", crl.next_update_utc.isoformat() if crl.next_update_utc else "-"),
                 ("Signature", crl.signature_algorithm_oid._name), ("Revoked", str(len(crl)))]
        for entry in sorted(crl, key=lambda e: e.serial_number):
            reason = next((e.value.reason.value for e in entry.extensions if isinstance(e.value, x509.CRLReason)),
                          "unspecified")
            lines.append(("", f"  serial {format(entry.serial_number, 'x')} revoked "
                              f"{entry.revocation_date_utc.isoformat()} ({reason})"))
        return lines
    try:
        cert = (x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE-----"):])
                if b"-----BEGIN CERTIFICATE-----" in data else x509.load_der_x509_certificate(data))
    except ValueError as e:
        raise PkiError(f"{path} is not a certificate or CRL ({e})") from None
    i = describe(cert)
    return [("Subject", i["subject"]), ("Issuer", i["issuer"]), ("Serial", i["serial"]),
            ("Not before", i["not_before"].isoformat()), ("Not after", i["not_after"].isoformat()),
            ("SANs", ", ".join(i["sans"]) or "-"), ("Usages", ", ".join(i["usages"] + i["extended_usages"]) or "-"),
            ("CA", "yes" if i["ca"] else "no"), ("SHA-256", i["sha256"])]


def _is_cert_der(data: bytes) -> bool:
    from cryptography import x509

    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True
