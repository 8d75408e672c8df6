"""The remembered no-op plan: fast when nothing changed, never hiding a change."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from helpers import MEMO_PKI as PKI, apply_in_process
from pkiascode.project import Project
from pkiascode.state import dump_txn


NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@pytest.fixture
def applied(tmp_path: Path) -> Path:
    return apply_in_process(tmp_path, PKI, at=NOW)


def plan(directory: Path, **kw: object):
    project = Project(directory / "pki.toml")
    try:
        return project.plan(at=kw.pop("at", NOW), remembered=True, **kw), project  # type: ignore[arg-type]
    finally:
        project.close()


def memo_file(directory: Path) -> Path:
    return directory / ".pki" / "cache" / "noop.json"


def test_an_empty_plan_is_remembered_and_reused_without_reading_pki_toml_again(applied, monkeypatch):
    first, _ = plan(applied)
    assert first.empty and memo_file(applied).exists()
    memo = json.loads(memo_file(applied).read_text())
    assert set(memo["refs"]) == {"local"} and len(memo["refs"]["local"]) == 3  # root, web, the audit key
    assert "files" not in memo and "stores" not in memo  # both come from state/ and pki.toml every time
    assert memo["quiet_until"] is not None

    def boom(self):  # the remembered plan must not need the parsed configuration
        raise AssertionError("desired() was called")

    monkeypatch.setattr(Project, "desired", boom)
    again, _ = plan(applied)
    assert again.empty
    assert (again.config_digest, again.state_digest) == (first.config_digest, first.state_digest)


def test_a_changed_pki_toml_is_planned_again(applied):
    plan(applied)
    (applied / "pki.toml").write_text(PKI.replace('["web.internal"]', '["web.internal", "www.internal"]'))
    p, _ = plan(applied)
    assert [c.action.value for c in p.changes] == ["reissue"]


def test_an_edited_certificate_file_is_drift_even_with_its_mtime_put_back(applied):
    plan(applied)
    cert = applied / "state" / "certs" / "web.pem"
    st = cert.stat()
    data = bytearray(cert.read_bytes())
    at = data.index(b"-----BEGIN CERTIFICATE-----\n") + 100  # in the base64 of the certificate
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    cert.write_bytes(bytes(data))
    os.utime(cert, ns=(st.st_atime_ns, st.st_mtime_ns))
    p, _ = plan(applied)
    assert [(c.action.value, c.name) for c in p.changes] == [("reissue", "web")]


def test_a_deleted_key_is_not_hidden_by_the_memo(applied):
    """The memo asks the key stores every time: a key deleted since is a plan error (rekeyed only
    when asked for), not a remembered "nothing to do"."""
    from pkiascode.errors import PlanError

    plan(applied)
    for key in (applied / ".pki" / "keys").glob("web-*.pem"):
        key.unlink()
    with pytest.raises(PlanError, match="certificate.web: its key web-.* is missing"):
        plan(applied)


def test_planning_past_the_horizon_is_planned_again(applied):
    plan(applied)
    p, _ = plan(applied, at=NOW + dt.timedelta(days=85))
    assert ("renew", "web") in [(c.action.value, c.name) for c in p.changes]


def test_replace_and_a_pending_apply_never_use_the_memo(applied):
    plan(applied)
    p, _ = plan(applied, replace=["web"])
    assert [c.action.value for c in p.changes if c.name == "web"] == ["rekey"]
    journal = applied / ".pki" / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    # a pending transaction that (as after a crash) equals the state already written
    project = Project(applied / "pki.toml")
    state = project.state
    txn = {"inventory": state.read_inventory_bytes().decode(), "files": {}, "audit_prev": "0" * 64, "audit": "",
           "audit_size": state.audit_size(), "plan": None, "message": "x", "retire_keys": [], "commit": False}
    (journal / "txn.json").write_bytes(dump_txn(txn))
    p, _ = plan(applied)
    assert p.empty and any("interrupted apply" in w for w in p.warnings)



def test_pki_plan_answers_from_the_memo_and_apply_never_does(tmp_path, monkeypatch, capsys):
    """Plain `pki plan` (the command, not only `Project.plan`) uses the memo: its second run does not
    parse pki.toml. `pki apply` plans from pki.toml and state/ whatever the memo says. (Validity 1y:
    nothing enters the 90-day expiry outlook for a while, so the plan stays empty.)"""
    from helpers import run_main

    (tmp_path / "pki.toml").write_text(PKI.replace('validity = "91d"', 'validity = "1y"'))
    assert run_main(capsys, "-C", str(tmp_path), "apply", "--auto-approve", "--no-commit")[0] == 0
    assert run_main(capsys, "-C", str(tmp_path), "plan")[0] == 0
    assert memo_file(tmp_path).exists()
    parsed: list[str] = []
    real = Project.desired

    def counted(self):
        parsed.append("pki.toml")
        return real(self)

    monkeypatch.setattr(Project, "desired", counted)
    code, out, _ = run_main(capsys, "-C", str(tmp_path), "plan")
    assert (code, parsed) == (0, []) and "No changes" in out
    code, out, _ = run_main(capsys, "-C", str(tmp_path), "apply", "--auto-approve", "--no-commit")
    assert code == 0 and parsed, out
