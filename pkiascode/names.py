"""Parsing of the small languages inside pki.toml: durations, hosts, usages, name constraints.

No crypto and no I/O here: these run on every ``pki validate``.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
from collections.abc import Iterable
from typing import Literal

__all__ = [
    "parse_duration", "format_duration", "classify_host", "Host", "canonical_usages",
    "KEY_USAGES", "EXTENDED_USAGES", "did_you_mean", "NAME_RE", "constraint_kind",
    "host_permitted",
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

_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _valid_dns(name: str) -> bool:
    if name.startswith("*."):
        name = name[2:]
    name = name.rstrip(".") if name.endswith(".") and len(name) > 1 else name
    if not name or len(name) > 253:
        return False
    return all(_LABEL_RE.match(label) for label in name.split("."))


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
    if "://" in h:
        scheme = h.split("://", 1)[0]
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", scheme) or len(h) == len(scheme) + 3:
            raise ValueError(f"bad URI {host!r}")
        return ("uri", h)
    if "@" in h:
        local, _, domain = h.rpartition("@")
        if not local or not _valid_dns(domain) or domain.startswith("*."):
            raise ValueError(f"bad email address {host!r}")
        return ("email", h)
    if not _valid_dns(h):
        raise ValueError(f"bad host {host!r}: not an IP address, email, URI or DNS name")
    return ("dns", h.lower())


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


# --- name constraints ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1024)  # pure; asked again for every host checked against a constraint
def constraint_kind(value: str) -> tuple[str, object]:
    """A name-constraint entry: a CIDR (``10.0.0.0/8``) → ip, ``@example.com``/``a@b`` → email,
    ``uri:example.com`` → uri host, else a DNS suffix (``.cluster.local`` or ``example.com``)."""
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
    if v.startswith("uri:"):
        host = v[4:]
        if not _valid_dns(host.lstrip(".")):
            raise ValueError(f"bad URI host constraint {value!r}")
        return ("uri", host.lower())
    if "@" in v:
        domain = v.split("@", 1)[1] if not v.startswith("@") else v[1:]
        if not _valid_dns(domain.lstrip(".")):
            raise ValueError(f"bad email constraint {value!r}")
        return ("email", v.lower())
    if not _valid_dns(v.lstrip(".")) or v.startswith("*"):
        raise ValueError(f"bad name constraint {value!r}: use a DNS suffix, a CIDR range, "
                         "an email domain (@example.com) or uri:host")
    return ("dns", v.lower())


def _dns_within(name: str, suffix: str) -> bool:
    # RFC 5280: "example.com" matches itself and subdomains; ".example.com" only subdomains.
    name = name.lower()
    if name.startswith("*."):
        name = "w" + name[1:]  # a wildcard stands for any one label
    if suffix.startswith("."):
        return name.endswith(suffix)
    return name == suffix or name.endswith("." + suffix)


def _matches(host: Host, kind: str, value: object) -> bool:
    hkind, hvalue = host
    if kind == "dns" and hkind == "dns":
        return _dns_within(hvalue, str(value))
    if kind == "ip" and hkind == "ip":
        addr = ipaddress.ip_address(hvalue)
        return addr.version == value.version and addr in value  # type: ignore[attr-defined, operator]
    if kind == "email" and hkind == "email":
        c = str(value)
        mailbox = hvalue.lower()
        if "@" in c and not c.startswith("@"):
            return mailbox == c
        return _host_within(mailbox.rsplit("@", 1)[1], c.lstrip("@"))
    if kind == "uri" and hkind == "uri":
        from urllib.parse import urlsplit
        return _host_within((urlsplit(hvalue).hostname or "").lower(), str(value))
    return False


def _host_within(host: str, constraint: str) -> bool:
    # RFC 5280 for email and URI constraints: "example.com" is that host only, ".example.com" its subdomains
    return host.endswith(constraint) if constraint.startswith(".") else host == constraint


def host_permitted(host: Host, permitted: Iterable[str], excluded: Iterable[str]) -> str | None:
    """None if ``host`` satisfies the constraints, else why not (RFC 5280 §4.2.1.10 semantics)."""
    for c in excluded:
        kind, value = constraint_kind(c)
        if _matches(host, kind, value):
            return f"matches excluded {c!r}"
    same_kind = [c for c in permitted if constraint_kind(c)[0] == host[0]]
    if same_kind and not any(_matches(host, *constraint_kind(c)) for c in same_kind):
        return f"is not within permitted {', '.join(same_kind)}"
    return None
