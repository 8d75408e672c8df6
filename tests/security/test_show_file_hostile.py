"""Threat: a pull request commits a CRL whose fields are malformed; `pki show --file` (git's textconv
driver for state/crl/*.crl, what a reviewer's diff runs) failed with "unexpected ValueError" (review
R9 L1). It is a one-line error naming the file."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from helpers import assert_one_line


def test_a_crl_number_that_is_no_integer_is_one_line(repo, pki):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
           .last_update(now).next_update(now + dt.timedelta(days=1))
           .add_extension(x509.UnrecognizedExtension(ExtensionOID.CRL_NUMBER, b"\x04\x01x"), False)
           .sign(key, hashes.SHA256()))
    path = repo / "bad.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    r = pki("show", "--file", str(path), expect=1)
    line = assert_one_line(r.stderr.strip())
    assert line.startswith(f"Error: {path}: a certificate or CRL with a malformed field"), line
    assert "unexpected" not in line
