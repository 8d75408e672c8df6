"""The small languages inside pki.toml: durations, hosts, usages, name constraints, names."""

from __future__ import annotations

import ipaddress

import pytest

from pkiascode.names import (
    EXTENDED_USAGES, KEY_USAGES, NAME_RE, canonical_usages, certificate_usages, classify_host, constraint_kind,
    constraint_note, did_you_mean, format_duration, host_permitted, parse_duration, usage_errors, usages_for_key,
)
from pkiascode.keytypes import KeyType

D = 86400


# --- durations ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("5m", 300), ("8760h", 365 * D), ("90d", 90 * D), ("2w", 14 * D), ("1y", 365 * D),
    ("1y30d", 395 * D), ("1d12h30m15s", D + 12 * 3600 + 30 * 60 + 15), ("1d1d", 2 * D),
    (" 90d ", 90 * D), ("1y 30d", 395 * D), ("007d", 7 * D), ("1d0h", D),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, message", [
    ("", "empty duration"),
    ("   ", "empty duration"),
    ("90", "bad duration '90': use an integer and a unit (s m h d w y), e.g. \"90d\" or \"1y30d\""),
    ("d", "bad duration 'd': use an integer and a unit (s m h d w y), e.g. \"90d\" or \"1y30d\""),
    ("1.5d", "bad duration '1.5d': use an integer and a unit (s m h d w y), e.g. \"90d\" or \"1y30d\""),
    ("-5d", "bad duration '-5d': use an integer and a unit (s m h d w y), e.g. \"90d\" or \"1y30d\""),
    ("1Y", "bad duration '1Y': use an integer and a unit (s m h d w y), e.g. \"90d\" or \"1y30d\""),
    ("1 year", "bad duration '1 year': use an integer and a unit (s m h d w y), e.g. \"90d\" or \"1y30d\""),
    ("90dx", "bad duration '90dx': use an integer and a unit (s m h d w y), e.g. \"90d\" or \"1y30d\""),
    ("x90d", "bad duration 'x90d': use an integer and a unit (s m h d w y), e.g. \"90d\" or \"1y30d\""),
    ("0d", "duration '0d' must be positive"),
    ("0s0m", "duration '0s0m' must be positive"),
])
def test_parse_duration_errors(text, message):
    with pytest.raises(ValueError) as e:
        parse_duration(text)
    assert str(e.value) == message


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (59, "59s"), (3600, "1h"), (365 * D, "1y"), (395 * D, "1y30d"), (14 * D, "14d"),
    (D + 3661, "1d1h1m1s"), (10 * 365 * D, "10y"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["1y30d", "8760h", "2w", "90d", "1d12h30m15s", "100y"])
def test_format_parse_round_trip(text):
    assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


# --- hosts --------------------------------------------------------------------------------------

@pytest.mark.parametrize("host, classified", [
    ("10.32.0.1", ("ip", "10.32.0.1")),
    ("127.0.0.1", ("ip", "127.0.0.1")),
    ("::1", ("ip", "::1")),
    ("2001:DB8:0:0::1", ("ip", "2001:db8::1")),  # normalised
    ("admin@example.com", ("email", "admin@example.com")),
    ("spiffe://cluster.local/ns/default/sa/x", ("uri", "spiffe://cluster.local/ns/default/sa/x")),
    ("https://example.com/path?q=1", ("uri", "https://example.com/path?q=1")),
    ("kubernetes", ("dns", "kubernetes")),
    ("kubernetes.default.svc.cluster.local", ("dns", "kubernetes.default.svc.cluster.local")),
    ("Web.Example.COM", ("dns", "web.example.com")),
    ("*.apps.example.com", ("dns", "*.apps.example.com")),
    ("xn--e1afmkfd.example", ("dns", "xn--e1afmkfd.example")),
    ("_acme-challenge.example.com", ("dns", "_acme-challenge.example.com")),
    ("example.com.", ("dns", "example.com.")),
    ("a" * 63 + ".example", ("dns", "a" * 63 + ".example")),
])
def test_classify_host(host, classified):
    assert classify_host(host) == classified


@pytest.mark.parametrize("host, message", [
    ("", "bad host '': empty or surrounded by spaces"),
    (" web.example", "bad host ' web.example': empty or surrounded by spaces"),
    ("web example", "bad host 'web example': not an IP address, email, URI or DNS name"),
    ("*", "bad host '*': not an IP address, email, URI or DNS name"),
    ("*.*.example.com", "bad host '*.*.example.com': not an IP address, email, URI or DNS name"),
    ("web.*.example.com", "bad host 'web.*.example.com': not an IP address, email, URI or DNS name"),
    ("-web.example", "bad host '-web.example': not an IP address, email, URI or DNS name"),
    ("web-.example", "bad host 'web-.example': not an IP address, email, URI or DNS name"),
    ("a..example", "bad host 'a..example': not an IP address, email, URI or DNS name"),
    ("a" * 64 + ".example", f"bad host '{'a' * 64}.example': not an IP address, email, URI or DNS name"),
    ("é.example", "bad host 'é.example': verifiers compare the ASCII form; write 'xn--9ca.example'"),
    ("10.0.0.0/8", "bad host '10.0.0.0/8': not an IP address, email, URI or DNS name"),
    ("@example.com", "bad email address '@example.com'"),
    ("user@", "bad email address 'user@'"),
    ("user@*.example.com", "bad email address 'user@*.example.com'"),
    ("https://", "bad URI 'https://'"),
    ("1http://x", "bad URI '1http://x'"),
])
def test_classify_host_errors(host, message):
    with pytest.raises(ValueError) as e:
        classify_host(host)
    assert str(e.value) == message


def test_dns_name_length_limit():
    name = ".".join(["a" * 63] * 4)  # 255 characters
    with pytest.raises(ValueError):
        classify_host(name)
    ok = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253
    assert classify_host(ok) == ("dns", ok)


# --- usages -------------------------------------------------------------------------------------

def test_canonical_usages_normalises_sorts_and_deduplicates():
    assert canonical_usages(["server_auth", "Signing", "digital signature", "client auth", "server auth"]) == (
        "client auth", "digital signature", "server auth")
    assert canonical_usages(["non_repudiation", "s/mime"]) == ("content commitment", "email protection")
    assert canonical_usages([]) == ()


@pytest.mark.parametrize("usage", sorted(set(KEY_USAGES) | set(EXTENDED_USAGES)))
def test_every_cfssl_spelling_is_accepted_with_spaces_or_underscores(usage):
    assert len(canonical_usages([usage])) == 1
    assert canonical_usages([usage.replace(" ", "_")]) == canonical_usages([usage])


@pytest.mark.parametrize("usage, message", [
    ("sever auth", "unknown usage 'sever auth' (did you mean 'server auth'?)"),
    ("client_auht", "unknown usage 'client_auht' (did you mean 'client auth'?)"),
    ("keyEncipherment", "unknown usage 'keyEncipherment' (did you mean 'key encipherment'?)"),
    ("frobnicate", "unknown usage 'frobnicate'"),
])
def test_unknown_usage(usage, message):
    with pytest.raises(ValueError) as e:
        canonical_usages(["server auth", usage])
    assert str(e.value) == message


def test_did_you_mean():
    assert did_you_mean("hots", ["hosts", "issuer"]) == " (did you mean 'hosts'?)"
    assert did_you_mean("zzz", ["hosts", "issuer"]) == ""
    assert did_you_mean("x", []) == ""


# --- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["root", "kube-api-server", "node-0", "a", "0", "etcd.peer", "x_y"])
def test_valid_names(name):
    assert NAME_RE.match(name)


@pytest.mark.parametrize("name", ["", "Root", "-root", ".root", "_root", "my root", "root/ca", "röot", "root\t"])
def test_invalid_names(name):
    assert not NAME_RE.match(name)


def test_a_name_with_a_trailing_newline_is_invalid():
    assert not NAME_RE.match("root\n")


# --- usages that fit the key and each other ------------------------------------------------------

@pytest.mark.parametrize("key, kept, dropped", [
    (KeyType.RSA_2048, ("data encipherment", "digital signature", "key encipherment"), ("key agreement",)),
    (KeyType.ECDSA_P256, ("digital signature", "key agreement"), ("data encipherment", "key encipherment")),
    (KeyType.ECDSA_P384, ("digital signature", "key agreement"), ("data encipherment", "key encipherment")),
    (KeyType.ED25519, ("digital signature",), ("data encipherment", "key agreement", "key encipherment")),
])
def test_usages_for_key(key, kept, dropped):
    usages = canonical_usages(["digital signature", "key encipherment", "data encipherment", "key agreement"])
    assert usages_for_key(usages, key) == (kept, dropped)


def test_rsa_drops_encipher_only_with_key_agreement():
    usages = canonical_usages(["key agreement", "encipher only", "digital signature"])
    assert usages_for_key(usages, KeyType.RSA_2048) == (("digital signature",), ("encipher only", "key agreement"))


@pytest.mark.parametrize("usages, is_ca, errors", [
    (["encipher only"], False, ["usage 'encipher only' needs 'key agreement' (alone it leaves a key usage with "
                                "no bit set)"]),
    (["decipher only", "digital signature"], False,
     ["usage 'decipher only' needs 'key agreement' (alone it leaves a key usage with no bit set)"]),
    (["key agreement", "encipher only"], False, []),
    (["key agreement", "encipher only", "decipher only"], False,
     ["usages 'encipher only' and 'decipher only' exclude each other (RFC 5280 §4.2.1.3)"]),
    (["timestamping", "server auth"], False, ["usage 'timestamping' must be the only extended usage (RFC 3161)"]),
    (["timestamping", "digital signature", "content commitment"], False, []),
    (["cert sign", "server auth"], False,
     ["usage 'cert sign' is for authorities: a certificate (CA:FALSE) cannot have it"]),
    (["crl sign"], False, ["usage 'crl sign' is for authorities: a certificate (CA:FALSE) cannot have it"]),
    (["cert sign", "crl sign", "digital signature"], True, []),
    (["server auth", "client auth", "digital signature"], False, []),
])
def test_usage_errors(usages, is_ca, errors):
    assert usage_errors(canonical_usages(usages), is_ca=is_ca) == errors


def test_certificate_usages_note_and_csr_defaults():
    profile = canonical_usages(["digital signature", "key encipherment", "server auth"])
    assert certificate_usages(profile, listed_key=KeyType.ECDSA_P256, key=KeyType.ECDSA_P256) == (
        ("digital signature", "server auth"), ("key encipherment",),
        "usage 'key encipherment' left out: an ECDSA key cannot encipher (RFC 5480)")
    assert certificate_usages(profile, listed_key=KeyType.RSA_2048, key=KeyType.RSA_2048)[1:] == ((), None)
    # a CSR entry without usages has the defaults of the entry's key setting; the CSR's key decides
    ec_defaults = canonical_usages(["digital signature", "server auth", "client auth"])
    assert certificate_usages(ec_defaults, listed_key=KeyType.ECDSA_P256, key=KeyType.RSA_3072, csr=True) == (
        ("client auth", "digital signature", "key encipherment", "server auth"), (), None)
    rsa_defaults = canonical_usages(["digital signature", "key encipherment", "server auth", "client auth"])
    assert certificate_usages(rsa_defaults, listed_key=KeyType.RSA_2048, key=KeyType.ED25519, csr=True) == (
        ec_defaults, (), None)
    # listed usages are kept as listed, less what the CSR's key cannot have
    assert certificate_usages(profile, listed_key=KeyType.ECDSA_P256, key=KeyType.ED25519, csr=True)[1] == (
        "key encipherment",)


# --- name constraints ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, kind", [
    ("10.0.0.0/8", ("ip", ipaddress.ip_network("10.0.0.0/8"))),
    ("fd00::/8", ("ip", ipaddress.ip_network("fd00::/8"))),
    ("cluster.local", ("dns", "cluster.local")),
    (".cluster.local", ("dns", "cluster.local")),  # the RFC 5280 form: the leading dot goes
    ("Example.COM", ("dns", "example.com")),
    ("xn--bcher-kva.example", ("dns", "xn--bcher-kva.example")),
    ("@example.com", ("email", "@example.com")),
    ("@.Example.com", ("email", "@.example.com")),
    ("Ops@Example.com", ("email", "Ops@example.com")),  # a mailbox's local part keeps its case
    ("uri:.example.com", ("uri", ".example.com")),
])
def test_constraint_kind(value, kind):
    assert constraint_kind(value) == kind


@pytest.mark.parametrize("value, message", [
    ("10.0.0.1/8", "bad IP range '10.0.0.1/8': 10.0.0.1/8 has host bits set"),
    ("10.0.0.0/33", "bad IP range '10.0.0.0/33': '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"),
    ("*.example.com", "bad name constraint '*.example.com': use a DNS name, a CIDR range, an email domain "
                      "(@example.com) or uri:host"),
    ("bad name", "bad name constraint 'bad name': use a DNS name, a CIDR range, an email domain "
                 "(@example.com) or uri:host"),
    ("uri:", "bad URI host constraint 'uri:'"),
    ("uri:*.example.com", "bad URI host constraint 'uri:*.example.com'"),
    ("@", "bad email constraint '@'"),
    ("example.com.", "bad name constraint 'example.com.': no trailing dot (verifiers do not read one)"),
    ("bücher.example", "bad name constraint 'bücher.example': verifiers compare the ASCII form; "
                       "write 'xn--bcher-kva.example'"),
    ("@bücher.example", "bad name constraint '@bücher.example': verifiers compare the ASCII form; "
                        "write '@xn--bcher-kva.example'"),
])
def test_constraint_kind_errors(value, message):
    with pytest.raises(ValueError) as e:
        constraint_kind(value)
    assert str(e.value) == message


def test_a_bare_ip_constraint_is_not_a_dns_suffix():
    with pytest.raises(ValueError, match=r"an IP address needs a prefix length, e\.g\. 10\.0\.0\.1/32"):
        constraint_kind("10.0.0.1")


def test_constraint_note_for_a_leading_dot_only():
    assert constraint_note(".cluster.local") == (
        "name constraint '.cluster.local' is written as 'cluster.local' (RFC 5280): it covers cluster.local "
        "itself too, not only the names below it")
    assert constraint_note("cluster.local") is None
    assert constraint_note("uri:.example.com") is None  # RFC 5280 has the leading dot for URI hosts
    assert constraint_note("@.example.com") is None  # and for email domains


@pytest.mark.parametrize("host, permitted, excluded, why", [
    # DNS: "example.com" is itself and below; a leading dot is the same (the RFC 5280 form is encoded)
    (("dns", "example.com"), ["example.com"], [], None),
    (("dns", "a.b.example.com"), ["example.com"], [], None),
    (("dns", "badexample.com"), ["example.com"], [], "is not within permitted example.com"),
    (("dns", "example.com"), [".example.com"], [], None),
    (("dns", "a.example.com"), [".example.com"], [], None),
    (("dns", "*.example.com"), ["example.com"], [], None),
    (("dns", "*.example.com"), [".example.com"], [], None),
    (("dns", "kubernetes"), [".cluster.local", "10.0.0.0/8"], [], "is not within permitted .cluster.local"),
    (("dns", "a.evil.example.com"), ["example.com"], ["evil.example.com"], "matches excluded 'evil.example.com'"),
    (("dns", "a.example.com"), ["a.example.com", "b.example.com"], [], None),
    (("dns", "c.example.com"), ["a.example.com", "b.example.com"], [],
     "is not within permitted a.example.com, b.example.com"),
    # wildcards: every name a wildcard stands for counts
    (("dns", "*.example.com"), [], ["evil.example.com"], "matches excluded 'evil.example.com'"),
    (("dns", "*.example.com"), [], ["example.com"], "matches excluded 'example.com'"),
    (("dns", "*.example.com"), [], ["a.b.example.com"], None),  # one label only
    (("dns", "*.example.com"), ["a.example.com"], [], "is not within permitted a.example.com"),
    # trailing dots: read differently by Go (refused) and OpenSSL (literal)
    (("dns", "a.evil.example.com."), [], ["evil.example.com"],
     "has a trailing dot, which verifiers read differently under name constraints"),
    (("dns", "a.example.com."), ["example.com"], [],
     "has a trailing dot, which verifiers read differently under name constraints"),
    (("dns", "a.example.com."), ["10.0.0.0/8"], [], None),  # no DNS constraint: nothing to read
    # case
    (("dns", "A.Evil.Example.COM"), [], ["EVIL.example.com"], "matches excluded 'EVIL.example.com'"),
    # IP
    (("ip", "10.32.0.1"), ["10.0.0.0/8"], [], None),
    (("ip", "11.0.0.1"), ["10.0.0.0/8"], [], "is not within permitted 10.0.0.0/8"),
    (("ip", "::1"), ["10.0.0.0/8"], [], "is not within permitted 10.0.0.0/8"),
    (("ip", "10.1.2.3"), [], ["10.1.0.0/16"], "matches excluded '10.1.0.0/16'"),
    (("ip", "::ffff:10.1.2.3"), [], ["10.1.0.0/16"],
     "is an IPv4-mapped IPv6 address, which IP range constraints miss but verifiers match to 10.1.2.3: "
     "write that instead"),
    (("ip", "::ffff:10.1.2.3"), ["::/0"], [],
     "is an IPv4-mapped IPv6 address, which IP range constraints miss but verifiers match to 10.1.2.3: "
     "write that instead"),
    # a kind without constraints of its own is not restricted
    (("ip", "192.168.0.1"), [".cluster.local"], [], None),
    (("dns", "anything.example"), ["10.0.0.0/8"], [], None),
    (("email", "a@example.com"), [".example.com"], [], None),
    # email: a domain is that host only when permitted (OpenSSL), that host and below when excluded (Go)
    (("email", "a@example.com"), ["@example.com"], [], None),
    (("email", "a@EXAMPLE.com"), ["@example.com"], [], None),
    (("email", "a@sub.example.com"), ["@example.com"], [], "is not within permitted @example.com"),
    (("email", "a@sub.example.com"), [], ["@example.com"], "matches excluded '@example.com'"),
    (("email", "a@sub.example.com"), ["@.example.com"], [], None),
    (("email", "a@example.com"), ["@.example.com"], [], "is not within permitted @.example.com"),
    (("email", "a@example.org"), ["@example.com"], [], "is not within permitted @example.com"),
    (("email", "ops@example.com"), ["ops@example.com"], [], None),
    (("email", "dev@example.com"), ["ops@example.com"], [], "is not within permitted ops@example.com"),
    # URI: by host, as email
    (("uri", "spiffe://x.cluster.local/ns/a"), ["uri:.cluster.local"], [], None),
    (("uri", "https://example.org/x"), ["uri:.cluster.local"], [], "is not within permitted uri:.cluster.local"),
    (("uri", "https://a.example.org/x"), ["uri:example.org"], [], "is not within permitted uri:example.org"),
    (("uri", "https://a.example.org/x"), [], ["uri:example.org"], "matches excluded 'uri:example.org'"),
    (("uri", "https://10.0.0.1/x"), ["uri:example.org"], [],
     "has an IP address as host, which URI name constraints cannot be checked against"),
    (("uri", "urn:x:y"), [], ["uri:example.org"], "has no host, which URI name constraints cannot be checked against"),
    (("uri", "https://a.example.org./x"), [], ["uri:.example.org"],
     "has a trailing dot, which verifiers read differently under name constraints"),
])
def test_host_permitted(host, permitted, excluded, why):
    assert host_permitted(host, permitted, excluded) == why
