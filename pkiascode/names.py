"""Parsing of the small languages inside pki.toml: durations, hosts, usages, name constraints.

No crypto and no I/O here: these run on every ``pki validate``.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from .keytypes import KeyType

__all__ = [
    "parse_duration", "format_duration", "classify_host", "Host", "canonical_usages",
    "KEY_USAGES", "EXTENDED_USAGES", "did_you_mean", "NAME_RE", "constraint_kind",
    "host_permitted", "constraint_note", "usage_errors", "usages_for_key", "certificate_usages",
    "DEFAULT_CERT_USAGES", "AUTHORITY_USAGES",
]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*\Z")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION_RE = re.compile(r"(\d+)([smhdwy])")
#: longer would take a certificate (or --at) past what X.509 and datetime can hold
MAX_DURATION = 1000 * _UNITS["y"]


def parse_duration(text: str, *, allow_zero: bool = False) -> int:
    """``"1y30d"`` → seconds. Raises ValueError with a message fit for a user."""
    s = text.strip().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    if s == "0" and allow_zero:  # (no unit needed for nothing)
        return 0
    pos, total = 0, 0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"bad duration {text!r}: use an integer and a unit (s m h d w y), e.g. \"90d\" or \"1y30d\"")
    if total <= 0 and not allow_zero:
        raise ValueError(f"duration {text!r} must be positive")
    if total > MAX_DURATION:
        raise ValueError(f"duration {text!r} is too long (at most {MAX_DURATION // _UNITS['y']}y)")
    return total


def format_duration(seconds: int) -> str:
    out = []
    for unit in ("y", "d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"


# --- hosts -----------------------------------------------------------------------------------------

HostKind = Literal["dns", "ip", "email", "uri"]
Host = tuple[HostKind, str]

_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
#: dot-separated labels, in one match (a name per host of pki.toml: ten thousand on a large PKI)
_DNS_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")


def _valid_dns(name: str) -> bool:
    if name.startswith("*."):
        name = name[2:]
    name = name.rstrip(".") if name.endswith(".") and len(name) > 1 else name
    if not name or len(name) > 253:
        return False
    return _DNS_RE.match(name) is not None


def classify_host(host: str) -> Host:
    """CFSSL's rule: IP → IP SAN, ``a@b`` → email, ``scheme://`` → URI, else a validated DNS name."""
    h = host.strip()
    if h != host or not h:
        raise ValueError(f"bad host {host!r}: empty or surrounded by spaces")
    if h[0].isdigit() or ":" in h:  # only these can be addresses; saves an exception per DNS name
        try:
            return ("ip", str(ipaddress.ip_address(h)))
        except ValueError:
            pass
    if not h.isascii():
        if "://" in h:
            raise ValueError(f"bad URI {host!r}: only ASCII (percent-encode the path, write the host as xn--...)")
        _ascii_host(h, "host")
    if "://" in h:
        scheme = h.split("://", 1)[0]
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", scheme) or len(h) == len(scheme) + 3:
            raise ValueError(f"bad URI {host!r}")
        why = _uri_problem(h)
        if why:
            raise ValueError(f"bad URI {host!r}: {why}")
        return ("uri", h)
    if "@" in h:
        local, _, domain = h.rpartition("@")
        if not local or not _valid_dns(domain) or domain.startswith("*."):
            raise ValueError(f"bad email address {host!r}")
        return ("email", h)
    if not _valid_dns(h):
        raise ValueError(f"bad host {host!r}: not an IP address, email, URI or DNS name")
    return ("dns", h.lower())


#: every character RFC 3986 allows in a URI: unreserved, reserved and '%' (of a percent-encoding)
_NOT_URI_CHAR = re.compile(r"[^A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_REG_NAME = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=]*\Z")
_USERINFO = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:%]*\Z")


def _uri_authority(uri: str) -> tuple[str | None, str, str | None]:
    """(userinfo, host, port) of ``scheme://authority...`` as RFC 3986 reads it: the authority ends
    at the first '/', '?' or '#'; the userinfo at its last '@'. No authority (``urn:...``): no host."""
    if "://" not in uri:
        return None, "", None
    authority = re.split(r"[/?#]", uri.split("://", 1)[1], maxsplit=1)[0]
    userinfo, at, hostport = authority.rpartition("@")
    if hostport.startswith("["):
        host, close, rest = hostport.partition("]")
        host += close
    else:
        host, colon, port = hostport.partition(":")
        rest = colon + port
    return (userinfo if at else None), host, (rest[1:] if rest.startswith(":") else rest or None)


def _openssl_uri_host(uri: str) -> str:
    """The host OpenSSL checks a URI name constraint against (``nc_uri``): after ``://``, up to the
    first ':' anywhere, else the first '/'. It knows no user part, query or fragment."""
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    end = rest.find(":")
    end = rest.find("/") if end < 0 else end
    return rest if end < 0 else rest[:end]


def _uri_problem(uri: str) -> str | None:
    """Why ``uri`` (``scheme://...``, ASCII) is not a URI every parser reads alike, or None: a
    character RFC 3986 does not allow (a backslash, which WHATWG parsers read as '/', a space, a
    control, ``{}|^`<>"``), a broken percent-encoding, or an authority whose host parsers could find
    in different places (an '@' or '[' in the userinfo, a percent-encoded host, a port that is not
    digits)."""
    bad = _NOT_URI_CHAR.search(uri)
    if bad:
        return (f"{bad.group()!r} is not allowed in a URI (RFC 3986); parsers disagree on what it means "
                "(percent-encode it in a path, never in the host)")
    if _BAD_PERCENT.search(uri):
        return "a '%' not followed by two hex digits (RFC 3986 percent-encoding)"
    userinfo, host, port = _uri_authority(uri)
    if userinfo is not None and not _USERINFO.match(userinfo):
        return ("more than one '@' (or a '[' or ']') before its host: parsers disagree on where the host "
                "starts; percent-encode it in the user part")
    if "%" in host:
        return "a percent-encoded host, which some parsers decode and others do not"
    if host.startswith("["):
        if not host.endswith("]"):
            return "an IP literal host without its closing ']'"
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "an IP literal host that is not an IPv6 address"
    elif not _REG_NAME.match(host):
        return "a '[' or ']' outside an IP literal host"
    if port and not port.isdigit():
        return f"port {port!r} is not a number, so parsers disagree on where the host ends"
    return None


# --- usages ----------------------------------------------------------------------------------------

#: CFSSL usage spelling → key usage attribute of cryptography's x509.KeyUsage
KEY_USAGES = {
    "signing": "digital_signature",
    "digital signature": "digital_signature",
    "content commitment": "content_commitment",
    "non repudiation": "content_commitment",
    "key encipherment": "key_encipherment",
    "data encipherment": "data_encipherment",
    "key agreement": "key_agreement",
    "cert sign": "key_cert_sign",
    "crl sign": "crl_sign",
    "encipher only": "encipher_only",
    "decipher only": "decipher_only",
}
#: CFSSL usage spelling → extended key usage OID dotted string
EXTENDED_USAGES = {
    "any": "2.5.29.37.0",
    "server auth": "1.3.6.1.5.5.7.3.1",
    "client auth": "1.3.6.1.5.5.7.3.2",
    "code signing": "1.3.6.1.5.5.7.3.3",
    "email protection": "1.3.6.1.5.5.7.3.4",
    "s/mime": "1.3.6.1.5.5.7.3.4",
    "ipsec end system": "1.3.6.1.5.5.7.3.5",
    "ipsec tunnel": "1.3.6.1.5.5.7.3.6",
    "ipsec user": "1.3.6.1.5.5.7.3.7",
    "timestamping": "1.3.6.1.5.5.7.3.8",
    "ocsp signing": "1.3.6.1.5.5.7.3.9",
    "microsoft sgc": "1.3.6.1.4.1.311.10.3.3",
    "netscape sgc": "2.16.840.1.113730.4.1",
}
_CANONICAL = {"signing": "digital signature", "non repudiation": "content commitment", "s/mime": "email protection"}
ALL_USAGES = sorted(set(KEY_USAGES) | set(EXTENDED_USAGES))


def canonical_usages(usages: Iterable[str]) -> tuple[str, ...]:
    """Normalise spellings (underscores, aliases), drop duplicates, keep a stable order."""
    return _canonical_usages(tuple(usages))


@functools.lru_cache(maxsize=256)
def _canonical_usages(usages: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for raw in usages:
        u = raw.strip().lower().replace("_", " ")
        if u not in KEY_USAGES and u not in EXTENDED_USAGES:
            hint = did_you_mean(u, ALL_USAGES)
            raise ValueError(f"unknown usage {raw!r}{hint}")
        u = _CANONICAL.get(u, u)
        if u not in out:
            out.append(u)
    return tuple(sorted(out))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


#: what a certificate gets when neither it nor its profile lists usages (key encipherment only for RSA)
DEFAULT_CERT_USAGES = ("digital signature", "key encipherment", "server auth", "client auth")
AUTHORITY_USAGES = ("cert sign", "crl sign", "digital signature")

#: usages a key type cannot have: RFC 5480 §3 (EC: no key or data encipherment), RFC 8410 §5
#: (Ed25519 signs only), RFC 3279 §2.3.1 (RSA: no key agreement, so no encipher/decipher only)
_UNFIT = {
    "rsa": ("key agreement", "encipher only", "decipher only"),
    "ecdsa": ("key encipherment", "data encipherment"),
    "ed25519": ("key encipherment", "data encipherment", "key agreement", "encipher only", "decipher only"),
}
_WHY_UNFIT = {"rsa": "an RSA key cannot agree keys (RFC 3279)",
              "ecdsa": "an ECDSA key cannot encipher (RFC 5480)",
              "ed25519": "an Ed25519 key only signs (RFC 8410)"}


def usage_errors(usages: Iterable[str], *, is_ca: bool) -> list[str]:
    """Why a set of (canonical) usages can never be valid, one message per problem; [] when it can."""
    have = set(usages)
    errors = []
    for only in ("encipher only", "decipher only"):
        if only in have and "key agreement" not in have:
            errors.append(f"usage {only!r} needs 'key agreement' (alone it leaves a key usage with no bit set)")
    if {"encipher only", "decipher only"} <= have:
        errors.append("usages 'encipher only' and 'decipher only' exclude each other (RFC 5280 §4.2.1.3)")
    if "timestamping" in have and len(have & set(EXTENDED_USAGES)) > 1:
        errors.append("usage 'timestamping' must be the only extended usage (RFC 3161)")
    if not is_ca:
        for sign in ("cert sign", "crl sign"):
            if sign in have:
                errors.append(f"usage {sign!r} is for authorities: a certificate (CA:FALSE) cannot have it")
    return errors


def usages_for_key(usages: Sequence[str], key: KeyType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, dropped): the usages a key of type ``key`` can have, and the ones it cannot."""
    unfit = _UNFIT[key.family]
    kept = tuple(u for u in usages if u not in unfit)
    return kept, tuple(u for u in usages if u in unfit)


def certificate_usages(usages: Sequence[str], *, listed_key: KeyType, key: KeyType,
                       csr: bool = False) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """What a certificate gets: (kept, dropped, note). ``listed_key`` is the entry's ``key`` setting,
    ``key`` the key really signed (the CSR's for a ``csr`` entry). A CSR entry with the default usages
    gets the defaults of its CSR's key type. The note (for the plan) says what was left out and why.

    The planner and `pkiascode.x509.build_certificate` both decide through here: the certificate
    signed is the one the plan describes."""
    if csr and tuple(usages) == default_usages(listed_key):
        usages = default_usages(key)
    kept, dropped = usages_for_key(usages, key)
    note = None
    if dropped:
        listed = ", ".join(repr(u) for u in dropped)
        note = f"usage{'s' if len(dropped) > 1 else ''} {listed} left out: {_WHY_UNFIT[key.family]}"
    return kept, dropped, note


@functools.lru_cache(maxsize=16)
def default_usages(key: KeyType) -> tuple[str, ...]:
    return usages_for_key(canonical_usages(DEFAULT_CERT_USAGES), key)[0]


# --- name constraints ------------------------------------------------------------------------------
#
# What a verifier does, and so what the planner must refuse (Go crypto/x509 1.19+ and OpenSSL 3, both
# proven in tests/security/test_name_constraints.py):
# - a dNSName constraint "example.com" is that name and every name below it (RFC 5280). Both also read a
#   leading dot (".example.com") as "below only", which RFC 5280 does not define: pki.toml accepts it
#   and writes the RFC form "example.com" (which also covers example.com itself), with a plan note.
# - a wildcard SAN is a literal label to both: "*.example.com" is not excluded by "a.example.com",
#   although it serves a.example.com. The planner counts a wildcard as every name it stands for.
# - a trailing dot: Go refuses the name under constraints, OpenSSL compares it literally (so an excluded
#   subtree misses it). Refused under DNS constraints.
# - case: both compare DNS names without case; pki.toml lower-cases hosts and constraints.
# - IDNA: both compare the A-labels ("xn--..."); unicode names are refused with their A-label spelling.
# - an IPv4-mapped IPv6 address (::ffff:10.0.0.1) is 16 bytes, so IPv4 ranges miss it, yet Go matches
#   it to the host 10.0.0.1: refused under IP constraints.
# - email and URI hosts: for "example.com" OpenSSL means that host only, Go that host and below. A
#   permitted one must satisfy both (that host only), an excluded one matches if either would (below).

def _ascii_host(value: str, what: str) -> None:
    """ValueError for a unicode host, naming its A-label (``xn--``) spelling, which verifiers compare."""
    if value.isascii():
        return
    prefix, _, host = value.rpartition("@") if "@" in value else value.rpartition(":")
    sep = "@" if "@" in value else ":" if prefix else ""
    try:
        alabel = ".".join(label.encode("idna").decode() if label else "" for label in host.split("."))
    except UnicodeError:
        raise ValueError(f"bad {what} {value!r}: not a valid internationalised domain name") from None
    raise ValueError(f"bad {what} {value!r}: verifiers compare the ASCII form; write {prefix + sep + alabel!r}")


@functools.lru_cache(maxsize=1024)  # pure; asked again for every host checked against a constraint
def constraint_kind(value: str) -> tuple[str, object]:
    """A name-constraint entry: a CIDR (``10.0.0.0/8``) → ip, ``@example.com``/``a@b`` → email,
    ``uri:example.com`` → uri host, else a DNS name (``example.com``: it and all names below it).

    DNS values come back in the RFC 5280 form that is encoded: lower case, a leading dot removed."""
    v = value.strip()
    if "/" in v and not v.startswith("uri:"):
        try:
            return ("ip", ipaddress.ip_network(v, strict=True))
        except ValueError as e:
            raise ValueError(f"bad IP range {value!r}: {e}") from None
    try:
        ipaddress.ip_address(v)
    except ValueError:
        pass
    else:
        raise ValueError(f"bad name constraint {value!r}: an IP address needs a prefix length, "
                         f"e.g. {v}/{32 if ':' not in v else 128}")
    _ascii_host(v, "name constraint")
    if v.endswith("."):
        raise ValueError(f"bad name constraint {value!r}: no trailing dot (verifiers do not read one)")
    if v.startswith("uri:"):
        host = v[4:]
        if not _valid_dns(host.lstrip(".")) or host.startswith("*"):
            raise ValueError(f"bad URI host constraint {value!r}")
        return ("uri", host.lower())
    if "@" in v:
        domain = v.split("@", 1)[1] if not v.startswith("@") else v[1:]
        if not _valid_dns(domain.lstrip(".")) or domain.startswith("*"):
            raise ValueError(f"bad email constraint {value!r}")
        local, _, domain = v.rpartition("@")
        return ("email", f"{local}@{domain.lower()}")
    if not _valid_dns(v.lstrip(".")) or v.startswith("*"):
        raise ValueError(f"bad name constraint {value!r}: use a DNS name, a CIDR range, "
                         "an email domain (@example.com) or uri:host")
    return ("dns", v.lower().lstrip("."))


def constraint_note(value: str) -> str | None:
    """The plan note for a constraint written in a spelling RFC 5280 does not have (a leading dot)."""
    v = value.strip()
    if v.startswith(".") and constraint_kind(v)[0] == "dns":
        return (f"name constraint {v!r} is written as {v[1:]!r} (RFC 5280): it covers {v[1:]} itself too, "
                "not only the names below it")
    return None


def _labels_within(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _dns_matches(name: str, constraint: str, *, excluded: bool) -> bool:
    if not name.startswith("*."):
        return _labels_within(name, constraint)
    base = name[2:]
    if _labels_within(base, constraint):
        return True  # every name the wildcard stands for is below the constraint
    # excluded: does the wildcard stand for any name in the subtree? (one label more than its base)
    return excluded and constraint.endswith("." + base) and "." not in constraint[:-len(base) - 1]


def _host_matches(host: str, constraint: str, *, excluded: bool) -> bool:
    # email and URI hosts: ".example.com" is below only; "example.com" is that host to OpenSSL, that
    # host and below to Go: permitted by both only if equal, excluded by either if equal or below
    if constraint.startswith("."):
        return host.endswith(constraint)
    return _labels_within(host, constraint) if excluded else host == constraint


def _unverifiable(host: Host, kinds: set[str]) -> str | None:
    """Why verifiers would not agree on ``host`` under constraints of ``kinds``; None if they would."""
    hkind, value = host
    if hkind not in kinds:
        return None
    if hkind == "dns" and value.endswith("."):
        return "has a trailing dot, which verifiers read differently under name constraints"
    if hkind == "ip" and getattr(ipaddress.ip_address(value), "ipv4_mapped", None) is not None:
        return ("is an IPv4-mapped IPv6 address, which IP range constraints miss but verifiers match to "
                f"{ipaddress.ip_address(value).ipv4_mapped}: write that instead")  # type: ignore[attr-defined]
    if hkind == "uri":
        h = _uri_authority(value)[1].lower()
        if h.startswith("["):
            return "has an IP address as host, which URI name constraints cannot be checked against"
        openssl = _openssl_uri_host(value).lower()
        if h and openssl != h:
            return (f"is read with host {openssl!r} by OpenSSL but {h!r} by URI parsers (a user part, or a ':' "
                    "after the host): verifiers would judge different hosts against URI name constraints")
        if not h:
            return "has no host, which URI name constraints cannot be checked against"
        if h[0].isdigit() or ":" in h:
            try:
                ipaddress.ip_address(h)
                return "has an IP address as host, which URI name constraints cannot be checked against"
            except ValueError:
                pass
        if h.endswith("."):
            return "has a trailing dot, which verifiers read differently under name constraints"
    return None


def _matches(host: Host, kind: str, value: object, *, excluded: bool) -> bool:
    hkind, hvalue = host
    if kind != hkind:
        return False
    if kind == "dns":
        return _dns_matches(hvalue.lower(), str(value), excluded=excluded)
    if kind == "ip":
        addr = ipaddress.ip_address(hvalue)
        return addr.version == value.version and addr in value  # type: ignore[attr-defined, operator]
    if kind == "email":
        c = str(value)
        local, _, domain = hvalue.rpartition("@")
        if "@" in c and not c.startswith("@"):
            c_local, _, c_domain = c.rpartition("@")
            return local == c_local and domain.lower() == c_domain
        return _host_matches(domain.lower(), c.lstrip("@"), excluded=excluded)
    return _host_matches(_uri_authority(hvalue)[1].lower(), str(value), excluded=excluded)


def host_permitted(host: Host, permitted: Iterable[str], excluded: Iterable[str]) -> str | None:
    """None if every verifier would accept ``host`` under these constraints, else why not (RFC 5280
    §4.2.1.10, read as Go crypto/x509 and OpenSSL do; see the notes above)."""
    permitted, excluded = tuple(permitted), tuple(excluded)
    why = _unverifiable(host, {constraint_kind(c)[0] for c in permitted + excluded})
    if why:
        return why
    for c in excluded:
        if _matches(host, *constraint_kind(c), excluded=True):
            return f"matches excluded {c!r}"
    same_kind = [c for c in permitted if constraint_kind(c)[0] == host[0]]
    if same_kind and not any(_matches(host, *constraint_kind(c), excluded=False) for c in same_kind):
        return f"is not within permitted {', '.join(same_kind)}"
    return None
