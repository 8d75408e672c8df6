"""End to end through the `pki` command: an authority's key moves from local files into SoftHSM2.

The certificate stays as it is, the key is imported as sensitive and non-extractable, the local file
is gone, and what the authority signs afterwards is signed on the token.
"""

from __future__ import annotations

import pytest
from cryptography import x509

from helpers import Pki, clean_env, state_cert

pytestmark = [pytest.mark.pkcs11, pytest.mark.slow]

CONFIG = """\
[authority.root]
common_name = "Move Test Root CA"
key = "ecdsa-p384"
validity = "10y"
renew_before = "1y"

[certificate.web]
issuer = "root"
common_name = "web.internal"
hosts = ["web.internal"]
"""


def test_moving_an_authority_key_into_the_hsm(tmp_path, softhsm):
    from pkcs11 import Attribute, ObjectClass

    from pkiascode.backend import StoreContext
    from pkiascode_pkcs11 import Pkcs11KeyStore

    # the session's SoftHSM2 ($SOFTHSM2_CONF is this process's) and its PIN
    pki = Pki(tmp_path, clean_env(**{softhsm.pin_env: softhsm.pin}))
    pki.ok("init", ".")
    (tmp_path / "pki.toml").write_text(CONFIG)
    pki.apply()
    root_pem = (tmp_path / "state/certs/root.pem").read_bytes()
    keys = tmp_path / ".pki" / "keys"
    assert sorted(p.name.split("-")[0] for p in keys.iterdir()) == ["audit", "root", "web"]  # (audit: the log's key)

    (tmp_path / "pki.toml").write_text(
        CONFIG.replace('renew_before = "1y"\n', 'renew_before = "1y"\nbackend = "hsm"\n')
        + f'\n[backend.hsm]\nplugin = "pkcs11"\nmodule = "{softhsm.module}"\ntoken = "{softhsm.token}"\n')
    plan = pki.plan_json()
    assert [(c["action"], c["name"]) for c in plan["changes"]] == [("move_key", "root")]

    pki.apply()
    assert (tmp_path / "state/certs/root.pem").read_bytes() == root_pem  # the certificate stays
    assert sorted(p.name.split("-")[0] for p in keys.iterdir()) == ["audit", "web"]  # the local copy is gone

    # on the token: one imported pki-root-* key, sensitive and not extractable. (Looked at through
    # a store's login: a PKCS#11 login is per process, and logging out would end it for all.)
    store = Pkcs11KeyStore("hsm", softhsm.settings(), StoreContext(tmp_path, tmp_path / ".pki"))
    store.check()
    with store._conn().token.open() as session:
        roots = [k for k in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
                 if k[Attribute.LABEL].startswith("pki-root-")]
        assert len(roots) == 1
        assert roots[0][Attribute.SENSITIVE] is True and roots[0][Attribute.EXTRACTABLE] is False
        labels = [k[Attribute.LABEL] for k in roots]
    inventory = (tmp_path / "state/inventory.json").read_text()
    assert labels[0] in inventory and "PRIVATE KEY" not in inventory

    # what root signs now is signed on the token and chains to the unchanged certificate
    with (tmp_path / "pki.toml").open("a") as f:
        f.write('\n[certificate.api]\nissuer = "root"\ncommon_name = "api.internal"\nhosts = ["api.internal"]\n')
    pki.apply()
    state_cert(tmp_path, "api").verify_directly_issued_by(x509.load_pem_x509_certificate(root_pem))

    export = pki("export", "root", "--dir", str(tmp_path / "out"))
    assert export.returncode == 1 and "cannot leave backend hsm" in export.stderr
    assert "Traceback" not in export.stderr
