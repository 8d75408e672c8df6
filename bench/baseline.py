"""The baseline: what a user would write instead of pkiascode. Plain `cryptography`, serial, no state.

    python bench/baseline.py SPEC.json OUTDIR

For each entry of SPEC.json (made by bench/gen.py from a pki.toml; parents first) it generates the
private key, builds and signs the certificate with the same extensions pkiascode adds
(basicConstraints, keyUsage, extendedKeyUsage, subjectKeyIdentifier, authorityKeyIdentifier,
subjectAltName), and writes ``NAME-key.pem`` (PKCS#8, mode 0600) and ``NAME.pem``; for each
authority also an empty CRL ``NAME.crl`` (pkiascode signs one too). One key or certificate at a time,
in one thread. Prints its own phase timings as JSON on stdout.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import datetime as dt
import ipaddress
import json
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

T_IMPORT = time.perf_counter() - T0

ATTR = {"C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
        "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}
KU = {"digital signature": "digital_signature", "signing": "digital_signature",
      "key encipherment": "key_encipherment", "cert sign": "key_cert_sign", "crl sign": "crl_sign"}
EKU = {"server auth": ExtendedKeyUsageOID.SERVER_AUTH, "client auth": ExtendedKeyUsageOID.CLIENT_AUTH}


def new_key(kind: str):
    if kind.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[4:]))
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


def hash_for(key):
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


def san(hosts):
    out = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
            continue
        except ValueError:
            pass
        if "://" in h:
            out.append(x509.UniformResourceIdentifier(h))
        elif "@" in h:
            out.append(x509.RFC822Name(h))
        else:
            out.append(x509.DNSName(h))
    return out


def write(path: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def main() -> None:
    spec_path, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    with open(spec_path) as f:
        spec = json.load(f)
    now = dt.datetime.now(dt.UTC)
    keys, certs = {}, {}  # type: ignore[var-annotated]
    t_keygen = t_sign = t_write = 0.0
    for e in spec["entries"]:
        t = time.perf_counter()
        key = new_key(e["key"])
        t_keygen += time.perf_counter() - t

        t = time.perf_counter()
        attrs = [x509.NameAttribute(ATTR[a], v) for a, v in e["subject"]]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, e["common_name"]))
        name = x509.Name(attrs)
        issuer_cert = certs.get(e["issuer"]) if e["issuer"] else None
        issuer_key = keys[e["issuer"]] if e["issuer"] else key
        not_after = now + dt.timedelta(days=e["validity_days"])
        if issuer_cert is not None:
            not_after = min(not_after, issuer_cert.not_valid_after_utc)
        flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                               "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                               "encipher_only", "decipher_only"), False)
        for u in e["usages"]:
            if u in KU:
                flags[KU[u]] = True
        b = (x509.CertificateBuilder()
             .subject_name(name)
             .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(not_after)
             .add_extension(x509.BasicConstraints(ca=e["ca"], path_length=e["path_length"] if e["ca"] else None),
                            critical=True)
             .add_extension(x509.KeyUsage(**flags), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        ekus = [EKU[u] for u in e["usages"] if u in EKU]
        if ekus and not e["ca"]:
            b = b.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        if issuer_cert is not None:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                critical=False)
        if e["hosts"]:
            b = b.add_extension(x509.SubjectAlternativeName(san(e["hosts"])), critical=False)
        cert = b.sign(issuer_key, hash_for(issuer_key))
        crl = None
        if e["ca"]:
            crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
                   .next_update(now + dt.timedelta(days=7))
                   .add_extension(x509.CRLNumber(1), critical=False)
                   .sign(key, hash_for(key)))
        t_sign += time.perf_counter() - t

        t = time.perf_counter()
        write(os.path.join(out, e["name"] + "-key.pem"),
              key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()), 0o600)
        write(os.path.join(out, e["name"] + ".pem"), cert.public_bytes(serialization.Encoding.PEM))
        if crl is not None:
            write(os.path.join(out, e["name"] + ".crl"), crl.public_bytes(serialization.Encoding.PEM))
        t_write += time.perf_counter() - t
        keys[e["name"]], certs[e["name"]] = key, cert
    total = time.perf_counter() - T0
    print(json.dumps({"import": T_IMPORT, "keygen": t_keygen, "sign": t_sign, "write": t_write,
                      "total_in_process": total, "entries": len(spec["entries"])}))


if __name__ == "__main__":
    main()
