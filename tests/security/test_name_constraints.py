"""Threat: an authority's name constraints bypassed (issue 10.7, 13.2).

The planner refuses a host under name constraints unless every verifier would accept it, and a
certificate it refuses is shown here to be one a real verifier accepts (the bypass is real). Each
case builds root → constrained intermediate → leaf with pkiascode's own certificate builder (so the
encoded constraint is pkiascode's), and asks Go's crypto/x509 and ``openssl verify -x509_strict``.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from go.verifiers import go_verify, openssl_verify
from pkiascode.keytypes import KeyType, generate_private_key
from pkiascode.model import Entry, Kind, NameConstraints
from pkiascode.names import classify_host, host_permitted
from pkiascode.x509 import build_certificate, pem

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
KEY = generate_private_key(KeyType.ECDSA_P256)


def _entry(kind: Kind, name: str, issuer: str | None, *, hosts=(), nc=None) -> Entry:
    usages = ("cert sign", "crl sign", "digital signature") if kind is Kind.AUTHORITY else (
        "client auth", "digital signature", "server auth")
    return Entry(kind=kind, name=name, issuer=issuer, common_name=name, subject=(("O", "pkiascode tests"),),
                 hosts=tuple(hosts), usages=usages, validity=86400, renew_before=3600, key=KeyType.ECDSA_P256,
                 backend="local", rotate_key=False, exportable=False, name_constraints=nc)


def _chain(tmp_path: Path, host: str, permitted: list[str], excluded: list[str], *,
           raw: tuple[str, str] | None = None) -> tuple[Path, Path, Path]:
    """root → inter (constrained) → leaf with SAN ``host`` (``raw``: this (kind, value), unchecked)."""
    later = NOW + dt.timedelta(days=1)
    root = build_certificate(_entry(Kind.AUTHORITY, "root", None), public_key=KEY.public_key(), signer=KEY,
                             issuer_cert=None, now=NOW, not_after=later)
    inter = build_certificate(_entry(Kind.AUTHORITY, "inter", "root",
                                     nc=NameConstraints(tuple(permitted), tuple(excluded))),
                              public_key=KEY.public_key(), signer=KEY, issuer_cert=root, now=NOW, not_after=later)
    leaf = build_certificate(_entry(Kind.CERTIFICATE, "leaf", "inter", hosts=[raw or classify_host(host)]),
                             public_key=KEY.public_key(), signer=KEY, issuer_cert=inter, now=NOW, not_after=later)
    paths = tmp_path / "root.pem", tmp_path / "inter.pem", tmp_path / "leaf.pem"
    for path, cert in zip(paths, (root, inter, leaf)):
        path.write_bytes(pem(cert))
    return paths


# (SAN, permitted, excluded, planner allows it, Go accepts the chain, OpenSSL accepts the chain)
CASES = {
    "within a permitted name": ("api.example.com", ["example.com"], [], True, True, True),
    "the permitted name itself": ("example.com", ["example.com"], [], True, True, True),
    "outside a permitted name": ("api.example.org", ["example.com"], [], False, False, False),
    "a label that only ends like it": ("badexample.com", ["example.com"], [], False, False, False),
    "a leading dot is written in RFC 5280 form, which covers the name itself":
        ("cluster.local", [".cluster.local"], [], True, True, True),
    "below a leading-dot name": ("kubernetes.default.svc.cluster.local", [".cluster.local"], [], True, True, True),
    "in an excluded subtree": ("a.evil.example.com", ["example.com"], ["evil.example.com"], False, False, False),
    "case does not escape an excluded subtree": ("A.EVIL.example.com", [], ["evil.example.com"], False, False, False),
    # the bypasses the planner refuses: verifiers accept these
    # (None: either, by version: Go releases from late 2025 count the wildcard against excluded names)
    "a wildcard above an excluded name": ("*.example.com", [], ["evil.example.com"], False, None, True),
    "a trailing dot (OpenSSL misses the excluded subtree)":
        ("a.evil.example.com.", [], ["evil.example.com"], False, False, True),
    "an IPv4-mapped IPv6 address under an excluded IPv4 range":
        ("::ffff:10.1.2.3", [], ["10.1.0.0/16"], False, True, True),
    # IP ranges
    "inside a permitted range": ("10.1.2.3", ["10.0.0.0/8"], [], True, True, True),
    "outside a permitted range": ("11.1.2.3", ["10.0.0.0/8"], [], False, False, False),
    "in an excluded range": ("10.1.2.3", [], ["10.1.0.0/16"], False, False, False),
    "IPv6 in a permitted range": ("fd00::1", ["fd00::/8"], [], True, True, True),
    # email and URI hosts: "example.com" is that host only (OpenSSL) or it and below (Go)
    "a mailbox at a permitted domain": ("ops@example.com", ["@example.com"], [], True, True, True),
    "a mailbox below a permitted domain": ("ops@sub.example.com", ["@example.com"], [], False, True, False),
    "a mailbox below an excluded domain": ("ops@sub.example.com", [], ["@example.com"], False, False, True),
    "a URI below a leading-dot host": ("spiffe://a.cluster.local/ns/x", ["uri:.cluster.local"], [],
                                       True, True, True),
    "a URI below an excluded host": ("https://a.example.org/x", [], ["uri:example.org"], False, False, True),
    "a URI below a permitted host": ("https://a.example.org/x", ["uri:example.org"], [], False, True, False),
    # OpenSSL reads a URI's host as everything after "://" up to the first ':' (else '/'): a user part or a
    # ':' after the host makes it judge another host than URI parsers do (review F15)
    "a user part before a permitted URI host": ("https://evil@good.example/", ["uri:good.example"], [],
                                                False, True, False),
    "a ':' in the path of a URI below a permitted host": ("https://good.example/a:b", ["uri:good.example"], [],
                                                          False, True, False),
    "a user part before an excluded URI host": ("https://good.example@evil.example/", [], ["uri:evil.example"],
                                                False, False, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_planner_agrees_with_go_and_openssl(tmp_path, case):
    host, permitted, excluded, planner_ok, go_ok, openssl_ok = CASES[case]
    root, inter, leaf = _chain(tmp_path, host, permitted, excluded)
    go, go_out = go_verify(leaf, roots=[root], intermediates=[inter])
    ossl, ossl_out = openssl_verify(leaf, roots=[root], intermediates=[inter])
    why = host_permitted(classify_host(host), permitted, excluded)
    go_ok = go if go_ok is None else go_ok
    assert (why is None, go, ossl) == (planner_ok, go_ok, openssl_ok), (why, go_out, ossl_out)
    # what the planner allows, every verifier accepts
    assert not planner_ok or (go and ossl)


def test_a_wildcard_above_an_excluded_name_serves_that_name(tmp_path):
    """The bypass is real: OpenSSL (and Go before late 2025) accepts *.example.com for evil.example.com
    under an excluded evil.example.com."""
    root, inter, leaf = _chain(tmp_path, "*.example.com", [], ["evil.example.com"])
    assert openssl_verify(leaf, roots=[root], intermediates=[inter], host="evil.example.com")[0]
    assert host_permitted(("dns", "*.example.com"), [], ["evil.example.com"]) == "matches excluded 'evil.example.com'"


def test_an_ipv4_mapped_address_serves_the_excluded_ipv4_address(tmp_path):
    """The bypass is real: Go matches the SAN ::ffff:10.1.2.3 to the host 10.1.2.3."""
    root, inter, leaf = _chain(tmp_path, "::ffff:10.1.2.3", [], ["10.1.0.0/16"])
    assert go_verify(leaf, roots=[root], intermediates=[inter], eku="server auth", host="10.1.2.3")[0]
    assert host_permitted(("ip", "::ffff:10.1.2.3"), [], ["10.1.0.0/16"]) is not None


def test_the_leading_dot_is_encoded_in_rfc_5280_form(tmp_path):
    from cryptography import x509

    _, inter, _ = _chain(tmp_path, "a.cluster.local", [".cluster.local", "uri:.cluster.local"], [])
    nc = x509.load_pem_x509_certificate(inter.read_bytes()).extensions.get_extension_for_class(
        x509.NameConstraints).value
    assert [g.value for g in nc.permitted_subtrees] == ["cluster.local", ".cluster.local"]


# -- URIs that parsers read differently (review F15) -----------------------------------------------

F15 = "https://evil.com\\@good.example/"


def test_a_backslash_uri_is_a_bypass_and_is_refused(tmp_path):
    """``https://evil.com\\@good.example/``: Python's urlsplit reads host good.example, WHATWG URL (Node,
    browsers) evil.com, and OpenSSL accepts it under an excluded uri:evil.com. RFC 3986 has no '\\' in a
    URI: classify_host refuses it, so pki.toml cannot hold it."""
    import shutil
    import subprocess
    from urllib.parse import urlsplit

    root, inter, leaf = _chain(tmp_path, "", [], ["uri:evil.com"], raw=("uri", F15))
    assert openssl_verify(leaf, roots=[root], intermediates=[inter])[0]  # the bypass is real
    assert urlsplit(F15).hostname == "good.example"
    if shutil.which("node"):
        out = subprocess.run(["node", "-e", "console.log(new URL(process.argv[1]).hostname)", F15],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == "evil.com"
    with pytest.raises(ValueError, match=r"'\\\\' is not allowed in a URI \(RFC 3986\)"):
        classify_host(F15)


@pytest.mark.parametrize("uri, why", [
    (F15, "is not allowed in a URI"),
    ("https://good.example\\evil.com/", "is not allowed in a URI"),
    ("https://good.example/a b", "' ' is not allowed in a URI"),
    ("https://good.example/\tx", "is not allowed in a URI"),
    ("https://good.example/{x}", "'{' is not allowed in a URI"),
    ("https://good.example/a|b", "'|' is not allowed in a URI"),
    ("https://good.example/a^b", "'^' is not allowed in a URI"),
    ("https://good.example/a`b", "'`' is not allowed in a URI"),
    ('https://good.example/"', "is not allowed in a URI"),
    ("https://good.example/<x>", "'<' is not allowed in a URI"),
    ("https://good.example/%zz", "percent-encoding"),
    ("https://good.example/%4", "percent-encoding"),
    ("https://evil.com@x@good.example/", "more than one '@'"),
    ("https://evil.com%40good.example/", "percent-encoded host"),
    ("https://%65vil.com/", "percent-encoded host"),
    ("https://[::1/x", "without its closing ']'"),
    ("https://[evil.com]/", "not an IPv6 address"),
    ("https://good.example:80x/", "is not a number"),
])
def test_uris_parsers_read_differently_are_refused(uri, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        classify_host(uri)


@pytest.mark.parametrize("uri", ["https://good.example/", "https://good.example:8443/a/b?c=d#e",
                                 "spiffe://cluster.local/ns/x/sa/y", "https://u:p@good.example/",
                                 "https://good.example/%41%7e", "https://[fd00::1]:443/", "file:///etc/x"])
def test_rfc_3986_uris_stay_accepted(uri):
    assert classify_host(uri) == ("uri", uri)
