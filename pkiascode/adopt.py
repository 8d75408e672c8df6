"""``pki import DIR``: adopt an existing PKI without reissuing anything.

Reads certificate/key pairs as CFSSL writes them (``NAME.pem`` + ``NAME-key.pem``, from
``cfssljson -bare``) or as openssl scripts do (``NAME.crt`` + ``NAME.key``), matches each certificate
to its issuer by key identifier and subject (and checks the signature), and refuses the whole import
with the reason if a key does not match its certificate or a chain is incomplete. Then, in one
crash-safe transaction: the keys go into the chosen backend, the certificates into ``state/``, a
first CRL for each authority, ``import`` records into the audit log, and matching
``[authority.*]``/``[certificate.*]`` tables into pki.toml, written with tomlkit so its comments and
layout stay. Afterwards ``pki plan`` has nothing to do for what was imported.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import audit, ci
from .apply import NullProgress, abandon, complete, preflight, recover
from .backend import KeyRequest
from .errors import ConfigError, PkiError, control_character, printable
from .keytypes import key_type_of
from .lock import apply_lock, holder_info
from .model import Entry, Kind, Record, SUBJECT_ATTRIBUTES, format_time
from .names import format_duration
from .project import Project
from .state import certificate_file, read_file

__all__ = ["adopt", "find_pairs", "Candidate"]


@dataclasses.dataclass
class Candidate:
    """One certificate found in the directory being imported, with its key if one was found."""

    name: str
    cert_path: Path
    key_path: Path
    cert: Any
    key: Any
    issuer: str | None = None


def _sanitize(stem: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.")
    return name or "imported"


#: larger files are skipped: a certificate, a key or a CRL of a small PKI is a few KiB
MAX_FILE = 1024 * 1024


def _not_regular(path: Path) -> str | None:
    """Why ``path`` (not followed if a symbolic link) is not a file to read, or None."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return None
    return "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file"


def read_input(path: Path) -> bytes:
    """A file to import, read whole: a regular file only, never through a symbolic link, never
    waiting on a FIFO or device, `MAX_FILE` at most (`PkiError` otherwise)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PkiError(f"{path}: a symbolic link; pki import reads only regular files in the directory "
                           "(copy the file there)") from None
        raise PkiError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PkiError(f"{path}: not a regular file; pki import reads only regular files")
        if info.st_size > MAX_FILE:
            raise PkiError(f"{path}: larger than {MAX_FILE // 1024} KiB; not a certificate, key or CRL")
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise PkiError(f"{path}: larger than {MAX_FILE // 1024} KiB; not a certificate, key or CRL")
    return data


def find_pairs(directory: Path, notes: list[str] | None = None) -> Iterator[tuple[str, Path, Path | None]]:
    """(name, certificate file, key file or None) for every certificate in ``directory``. A file
    over `MAX_FILE`, a symbolic link, a FIFO or anything else not a regular file is skipped (noted
    in ``notes``); a name with a control character or an invisible mark is refused."""
    def note(text: str) -> None:
        if notes is not None:
            notes.append(printable(text))

    for path in sorted(directory.iterdir()):
        if control_character(path.name) is not None:
            raise PkiError(f"{directory}: the file name {path.name!r} holds a control character; rename it")
        if path.suffix not in (".pem", ".crt", ".cer") or path.name.endswith("-key.pem"):
            continue
        odd = _not_regular(path)
        if odd is not None:
            if odd != "a directory":
                note(f"skipped {path.name}: {odd}, not a regular file")
            continue
        if path.stat().st_size > MAX_FILE:
            note(f"skipped {path.name}: larger than {MAX_FILE // 1024} KiB, not a certificate")
            continue
        key = path.with_name(path.stem + "-key.pem") if path.suffix == ".pem" else path.with_suffix(".key")
        if b"-----BEGIN CERTIFICATE-----" not in read_input(path)[:4096]:
            continue  # e.g. a bundle of keys or a CSR named .pem
        if os.path.lexists(key):
            odd = _not_regular(key)
            if odd is not None:  # never read through a link out of the directory, never wait on a FIFO
                raise PkiError(f"{path}: its key {key.name} is {odd}, not a regular file; pki import reads only "
                               "regular files in the directory (copy the key there)")
        yield _sanitize(path.stem), path, key if os.path.lexists(key) else None


def _load(directory: Path, notes: list[str]) -> dict[str, Candidate]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from .x509 import public_key_der

    out: dict[str, Candidate] = {}
    for name, cert_path, key_path in find_pairs(directory, notes):
        try:
            cert = x509.load_pem_x509_certificate(read_input(cert_path))
        except ValueError as e:
            raise PkiError(f"{cert_path}: not a readable certificate ({e})") from None
        if key_path is None:
            raise PkiError(f"{cert_path}: no private key next to it ({cert_path.stem}-key.pem or "
                           f"{cert_path.stem}.key); pkiascode adopts a certificate only with its key")
        try:
            key = serialization.load_pem_private_key(read_input(key_path), password=None)
        except (ValueError, TypeError) as e:
            raise PkiError(f"{key_path}: not a readable unencrypted private key ({e})") from None
        if public_key_der(key.public_key()) != public_key_der(cert.public_key()):
            raise PkiError(f"{key_path} does not match {cert_path.name}: the key's public half differs from "
                           "the certificate's")
        try:
            key_type_of(key)
        except ValueError as e:
            raise PkiError(f"{key_path}: {e}") from None
        if name in out:
            raise PkiError(f"{cert_path} and {out[name].cert_path} would both be named {name!r}")
        out[name] = Candidate(name, cert_path, key_path, cert, key)
    if not out:
        raise PkiError(f"no certificates with keys found in {directory} (expected NAME.pem + NAME-key.pem, "
                       "or NAME.crt + NAME.key)")
    return out


def _aki(cert: Any) -> bytes | None:
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _signed_by(cert: Any, issuer: Any) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends
        return False


def _is_ca(cert: Any) -> bool:
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _match_issuers(cands: dict[str, Candidate], existing: dict[str, Any]) -> None:
    """Set each candidate's issuer by key identifier and subject, verifying the signature."""
    from .x509 import ski_of

    pool = {n: c.cert for n, c in cands.items() if _is_ca(c.cert)} | existing
    for cand in cands.values():
        cert = cand.cert
        if cert.issuer == cert.subject and _signed_by(cert, cert):
            if not _is_ca(cert):
                raise PkiError(f"{cand.cert_path}: a self-signed certificate that is not a CA cannot be adopted")
            continue
        aki = _aki(cert)
        found = [n for n, ca in pool.items() if n != cand.name and ca.subject == cert.issuer
                 and (aki is None or ski_of(ca) == aki) and _signed_by(cert, ca)]
        if not found:
            raise PkiError(f"{cand.cert_path}: incomplete chain: its issuer {cert.issuer.rfc4514_string()} is not "
                           "among the imported certificates nor in state; add the issuer's certificate and key")
        cand.issuer = found[0]


CRL_NAMES = ("{stem}.crl", "{stem}-crl.pem", "{stem}.crl.pem")


def _existing_crl(cand: Candidate) -> tuple[int, list[dict[str, Any]]]:
    """The CRL number and revocations of the CRL found next to an authority's certificate (``ca.crl``,
    ``ca-crl.pem``), so adopting it neither restarts the numbering nor forgets a revocation."""
    from .x509 import read_crl

    for pattern in CRL_NAMES:
        path = cand.cert_path.with_name(pattern.format(stem=cand.cert_path.stem))
        if os.path.lexists(path) and _not_regular(path) is None:  # (a link or FIFO is not the CRL)
            try:
                return read_crl(read_input(path), cand.cert)
            except ValueError as e:
                raise PkiError(f"{path}: cannot adopt this CRL of {cand.cert_path.name}: {e}") from None
    return 0, []


def _refuse_duplicates(cands: dict[str, Candidate], records: Any) -> None:
    """One certificate is one object: the same certificate (or serial of one issuer) twice would
    make revoking one revoke the other."""
    from .x509 import fingerprint

    seen: dict[Any, str] = {}
    for rec in records.values():
        seen[rec.sha256] = f"{rec.qualified} in state"
        seen[(rec.issuer, rec.serial)] = f"{rec.qualified} in state"
    for cand in cands.values():
        for key in (fingerprint(cand.cert), (cand.issuer, format(cand.cert.serial_number, "x"))):
            if key in seen:
                raise PkiError(f"{cand.cert_path}: the same certificate (or serial of the same issuer) as "
                               f"{seen[key]}; import it once")
            seen[key] = cand.cert_path.name


def _validity(cert: Any) -> int:
    secs = int((cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds())
    hours = round(secs / 3600) * 3600
    return hours if hours and abs(hours - secs) <= 600 else secs  # CFSSL and others backdate a little


def _seconds_or_none(value: Any) -> int | None:
    from .names import parse_duration

    try:
        return parse_duration(str(value)) if value is not None else None
    except ValueError:
        return None


def _entry_table(cand: Candidate, kind: Kind, backend: str | None, default_subject: dict[str, str],
                 default_renew: int | None) -> dict[str, Any]:
    """The pki.toml table that describes ``cand`` exactly."""
    from cryptography import x509

    from .x509 import describe

    cert = cand.cert
    attrs: dict[str, str] = {}
    cn = None
    oid_names = {"countryName": "C", "stateOrProvinceName": "ST", "localityName": "L", "organizationName": "O",
                 "organizationalUnitName": "OU", "commonName": "CN"}
    for attr in cert.subject:
        short = oid_names.get(attr.oid._name)
        if short is None:
            raise PkiError(f"{cand.cert_path}: subject attribute {attr.oid._name or attr.oid.dotted_string} "
                           "is not supported")
        if short in attrs or (short == "CN" and cn is not None):
            raise PkiError(f"{cand.cert_path}: subject has more than one {short}; pkiascode supports one each")
        if short == "CN":
            cn = str(attr.value)
        else:
            attrs[short] = str(attr.value)
    table: dict[str, Any] = {}
    if cand.issuer:
        table["issuer"] = cand.issuer
    table["common_name"] = cn or cand.name
    subject = {k: v for k, v in attrs.items() if default_subject.get(k) != v}
    subject.update({k: "" for k in default_subject if k not in attrs})
    if subject:
        table["subject"] = {k: subject[k] for k in SUBJECT_ATTRIBUTES if k in subject}
    table["key"] = key_type_of(cand.key).value
    validity = _validity(cert)
    table["validity"] = format_duration(validity)
    if default_renew is not None and default_renew >= validity:
        table["renew_before"] = format_duration(max(validity // 3, 1))  # [defaults] would not fit it
    if backend:
        table["backend"] = backend
    info = describe(cert)
    if kind is Kind.AUTHORITY:
        if info["path_length"] is not None:
            table["path_length"] = info["path_length"]
        nc = info.get("name_constraints")
        if nc:
            try:
                ext = cert.extensions.get_extension_for_class(x509.NameConstraints).value
                table["name_constraints"] = {
                    "permitted": [_constraint_text(g) for g in ext.permitted_subtrees or []],
                    "excluded": [_constraint_text(g) for g in ext.excluded_subtrees or []]}
            except x509.ExtensionNotFound:
                pass
    else:
        hosts = []
        try:
            for g in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value:
                hosts.append(str(g.value))
        except x509.ExtensionNotFound:
            pass
        if hosts:
            table["hosts"] = hosts
        usages = info["usages"] + info["extended_usages"]
        table["usages"] = usages or ["digital signature"]
    return table


def _constraint_text(g: Any) -> str:
    from cryptography import x509

    if isinstance(g, x509.IPAddress):
        return str(g.value)
    if isinstance(g, x509.RFC822Name):
        return "@" + g.value if "@" not in g.value else g.value
    if isinstance(g, x509.UniformResourceIdentifier):
        return "uri:" + g.value
    return str(g.value)


def _order(cands: dict[str, Candidate]) -> list[Candidate]:
    done: list[Candidate] = []
    seen: set[str] = set()

    def visit(c: Candidate) -> None:
        if c.name in seen:
            return
        seen.add(c.name)
        if c.issuer in cands:
            visit(cands[c.issuer])
        done.append(c)

    for c in cands.values():
        visit(c)
    return done


def adopt(project: Project, directory: Path, *, backend: str | None) -> list[str]:
    """Import every certificate/key pair of ``directory``; returns lines for the user."""
    import tomlkit

    from .config import load_config
    from cryptography.hazmat.primitives.serialization import Encoding

    from .x509 import fingerprint, public_key_der, sign_crl, ski_hex

    desired = project.desired()
    if backend is not None and backend not in desired.stores:
        raise PkiError(f"--backend {backend}: no [backend.{backend}] in pki.toml (known: "
                       f"{', '.join(sorted(desired.stores))})")
    commit = desired.settings.commit
    new_id = None
    if desired.settings.id is None:
        # pki.toml gets a [pki] id with the imported tables; the keys imported now are already in its namespace
        from .scaffold import new_pki_id

        new_id = new_pki_id()
        for spec in desired.stores.values():
            project.store(spec.name, plugin=spec.plugin, settings=spec.settings_dict(), pki_id=new_id)
    preflight(project, commit)
    skipped: list[str] = []
    cands = _load(directory, skipped)
    clash = sorted(set(cands) & set(desired.entries))
    if clash:
        raise PkiError(f"pki.toml already has {', '.join(clash)}; rename the files or remove those entries")

    state = project.state
    lines: list[str] = list(skipped)
    stores = project.used_stores()
    with apply_lock(project.work_dir / "lock", stores, holder_info(audit.actor()),
                    desired.settings.state_dir) as still_locked:
        recovered = recover(project, commit=commit, progress=NullProgress(), importing=True)
        lines += recovered
        state = project.state
        # state checked as a plan checks it (its signed heads included): the import's own head
        # will cover every line before it
        observed, inv = project.observe()
        clash = sorted(set(cands) & set(observed.records))
        if clash:
            if recovered and set(cands) <= set(observed.records):
                return lines  # this very import was interrupted, and is now complete
            raise PkiError(f"state already has {', '.join(clash)}")
        existing = {}
        from .x509 import load_certificate

        for name, rec in observed.records.items():
            if rec.kind is Kind.AUTHORITY and not rec.revoked:
                existing[name] = load_certificate(read_file(state.cert_path(name)) or b"")
        _match_issuers(cands, existing)
        _refuse_duplicates(cands, observed.records)

        # the new pki.toml, validated exactly as `pki plan` will read it
        # appended as a block of its own, so the file's existing tables and comments stay where they are
        text = project.config_path.read_text(encoding="utf-8")
        defaults = tomlkit.parse(text).get("defaults", {})
        default_subject = {k: str(v) for k, v in dict(defaults.get("subject", {})).items()}
        default_renew = _seconds_or_none(defaults.get("renew_before"))
        added = tomlkit.document()
        ordered = _order(cands)
        for cand in ordered:
            kind = Kind.AUTHORITY if _is_ca(cand.cert) else Kind.CERTIFICATE
            section = added.get(kind.value)
            if section is None:
                section = tomlkit.table(is_super_table=True)
                added[kind.value] = section
            table = tomlkit.table()
            for k, v in _entry_table(cand, kind, backend, default_subject, default_renew).items():
                if isinstance(v, dict):
                    inline = tomlkit.inline_table()
                    inline.update(v)
                    table[k] = inline
                else:
                    table[k] = v
            table.comment(f"imported from {cand.cert_path.name}")
            section[cand.name] = table
        new_text = text.rstrip("\n") + "\n\n" + tomlkit.dumps(added) if text.strip() else tomlkit.dumps(added)
        if new_id is not None:
            from .scaffold import with_pki_id

            new_text = with_pki_id(new_text, new_id)
        try:
            new_desired = load_config(project.config_path, options_for=project.plugins.options,
                                      data=new_text.encode("utf-8"))
        except ConfigError as e:
            raise PkiError(f"the imported tables would not be valid: {e.where}: {e.message}") from None

        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        actor = ci.actor()
        objects = dict(inv["objects"])
        revocations = list(inv["revocations"])
        files: dict[str, str | None] = {}
        events: list[dict[str, Any]] = []
        try:
            for cand in ordered:
                entry: Entry = new_desired.entries[cand.name]
                store = project.store(entry.backend)
                request = KeyRequest(entry.name, entry.key, entry.kind is Kind.AUTHORITY,
                                     entry.exportable).with_suffix()
                state.journal_intents([(entry.backend, request.to_json())])
                ref = store.import_key(request, cand.key)
                state.journal_key(ref.store, ref.id, request.suffix)
                issuer_cert = cands[cand.issuer].cert if cand.issuer in cands else existing.get(cand.issuer)
                cert = cand.cert
                rec = Record(
                    name=entry.name, kind=entry.kind, issuer=entry.issuer, serial=format(cert.serial_number, "x"),
                    sha256=fingerprint(cert), not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc, subject=entry.subject_text(),
                    key_type=entry.key.value, store=ref.store, plugin=store.plugin, key_id=ref.id,
                    key_origin="imported", key_exportable=store.is_exportable(ref),
                    ski=ski_hex(cert.public_key()),
                    issuer_ski=ski_hex(issuer_cert.public_key()) if issuer_cert is not None else None,
                    spec=entry.spec(), spec_digest=new_desired.spec_digests[entry.name],
                )
                adopted: list[dict[str, Any]] = []  # its CRL's revocations, in the inventory and the audit line
                if entry.kind is Kind.AUTHORITY:  # its CRL, re-signed by the adopted key where it now is
                    number, old_revocations = _existing_crl(cand)
                    adopted = [dict(r, issuer=entry.name) for r in old_revocations]
                    late = [r for r in adopted if r["date"] > format_time(now)]  # (one format: compared as text)
                    if late:
                        raise PkiError(f"{cand.cert_path}: its CRL revokes serial {late[0]['serial']} as of "
                                       f"{late[0]['date']}, a date to come; a revocation cannot be adopted before it")
                    revocations += adopted
                    crl_data, info = sign_crl(cert, store.signer(ref), old_revocations, number=number + 1, now=now,
                                              validity=entry.crl_validity)
                    rec = dataclasses.replace(rec, crl=info)
                    files[f"crl/{entry.name}.crl"] = crl_data.decode()
                der = cert.public_bytes(Encoding.DER)
                objects[entry.name] = dict(rec.to_json(), public_key_sha256=hashlib.sha256(
                    public_key_der(cert.public_key())).hexdigest())
                files[f"certs/{entry.name}.pem"] = certificate_file(cert, der).decode()
                events.append(audit.event("import", entry.kind.value, entry.name, time=format_time(now), actor=actor,
                                          serial=rec.serial, sha256=rec.sha256, not_after=format_time(rec.not_after),
                                          backend=rec.store, plan=None, source=str(cand.cert_path),
                                          **({"revocations": adopted} if adopted else {})))
                lines.append(f"imported {entry.qualified} from {cand.cert_path.name} (key into backend "
                             f"{entry.backend}{', non-exportable' if not rec.key_exportable else ''})")
            still_locked()
        except BaseException:
            abandon(project)  # nothing reached state: every key made here goes
            raise

        n_auth = sum(1 for c in ordered if _is_ca(c.cert))
        n_cert = len(ordered) - n_auth
        message = (f"pki import: {n_auth} authorit{'y' if n_auth == 1 else 'ies'}, {n_cert} "
                   f"certificate{'s' if n_cert != 1 else ''}\n\n"
                   + "\n".join(f"import {e['kind']}.{e['name']} from {Path(e['source']).name}" for e in events) + "\n")
        txn = state.transaction(objects=objects, revocations=revocations, files=files, events=events,
                                message=message, commit=commit,
                                config={"path": project.config_path.relative_to(project.base_dir).as_posix(),
                                        "content": new_text},
                                pki_id=new_id or project.desired().settings.id)
        sha = complete(project, txn, commit=commit)
    cfg = project.config_path.name
    lines.append(f"added {len(ordered)} table(s) to {cfg}; state/ " + (f"committed ({sha[:12]})" if sha else "written"))
    if commit:
        lines.append(f"review and commit {cfg}: git add {cfg} && git commit -m 'Adopt existing PKI'")
    return lines
