"""Threat: whoever can write a saved plan (``pki plan --out plan.json``, an artifact between a plan job
and an apply job) makes apply do what the file says (issue 10: "a saved plan's steps are executed as
written": editing the steps, digests left alone, made apply rekey the root and delete keys).

A saved plan is checked by planning again, under the apply lock, from pki.toml, ``state/`` and the
inputs the file records; apply executes that fresh plan, and only when it serializes exactly as the
file does. An edited step is refused in one line and nothing changes: no state, no key, no commit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import (
    SMALL_PKI, Pki, assert_one_line, assert_state_sound, commit_all, commit_count, head, inventory, key_files,
    new_repo, tree_snapshot,
)

API = '\n[certificate.api]\nissuer = "inter"\ncommon_name = "api"\nhosts = ["api.internal"]\n'


@pytest.fixture
def saved(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Pki, Path]:
    """An applied PKI, then a pki.toml change (a new certificate) planned into plan.json."""
    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    pki = Pki(repo)
    pki.apply()
    (repo / "pki.toml").write_text((repo / "pki.toml").read_text() + API)
    commit_all(repo, "add api")
    plan_file = tmp_path / "plan.json"
    pki.ok("plan", "--out", str(plan_file))
    return repo, pki, plan_file


def _snapshot(repo: Path) -> tuple[Any, ...]:
    return tree_snapshot(repo / "state"), key_files(repo), head(repo), commit_count(repo)


def _edit(plan_file: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(plan_file.read_text())
    edit(data)
    plan_file.write_text(json.dumps(data, indent=2) + "\n")


def _rekey_root(d: dict[str, Any]) -> None:
    # the create of certificate.api becomes a rekey of the root (summary fixed up; digests untouched)
    d["changes"][0] = {"action": "rekey", "kind": "authority", "name": "root",
                       "reasons": ["--replace: new key"], "diff": {}, "new_key": True}
    d["summary"] = {"rekey": 1}


def _retire_server(d: dict[str, Any]) -> None:
    d["changes"].append({"action": "revoke", "kind": "certificate", "name": "server", "reasons": ["x"],
                         "diff": {}, "revoke_reason": "cessation_of_operation", "retire": True})


def _drop_the_change(d: dict[str, Any]) -> None:
    d["changes"] = []
    d["summary"] = {}


def _edit_a_san(d: dict[str, Any]) -> None:
    d["changes"][0]["diff"]["hosts"]["after"] = ["api.internal", "evil.example"]


def _no_new_key(d: dict[str, Any]) -> None:
    d["changes"][0].pop("new_key")


@pytest.mark.parametrize("forgery", [_rekey_root, _retire_server, _drop_the_change, _edit_a_san, _no_new_key],
                         ids=lambda f: f.__name__.strip("_"))
def test_an_edited_saved_plan_is_refused_and_nothing_changes(saved, forgery):
    repo, pki, plan_file = saved
    before = _snapshot(repo)
    root_key = inventory(repo)["root"]["key"]["ref"]
    _edit(plan_file, forgery)
    r = pki("apply", str(plan_file), expect=1)
    message = assert_one_line(r.stderr.strip())
    assert message.startswith(f"Error: {plan_file} is not the plan pki.toml and state give ("), message
    assert "nothing changed" in message
    assert _snapshot(repo) == before
    assert inventory(repo)["root"]["key"]["ref"] == root_key
    assert "api" not in inventory(repo)


def test_the_error_says_where_the_file_and_planning_again_part(saved):
    repo, pki, plan_file = saved
    _edit(plan_file, _rekey_root)
    r = pki("apply", str(plan_file), expect=1)
    assert ("change 1: the file says rekey authority.root, planning again gives create certificate.api"
            in r.stderr)


def test_the_saved_plan_as_made_is_applied_and_is_what_planning_again_gives(saved):
    repo, pki, plan_file = saved
    r = pki("apply", str(plan_file), expect=0)
    assert "certificate.api will be created" in r.stdout
    assert "api" in inventory(repo)
    assert_state_sound(repo, pki, exact_keys=True)


def test_a_saved_plan_is_stale_once_state_or_pki_toml_changed(saved, tmp_path):
    repo, pki, plan_file = saved
    pki.apply()  # the same change, applied another way: state moved on
    before = _snapshot(repo)
    r = pki("apply", str(plan_file), expect=1)
    assert assert_one_line(r.stderr.strip()) == (f"Error: {plan_file} is stale: state changed since it was made; "
                                                  "run `pki plan --out` again")
    pki.ok("plan", "--out", str(plan_file))
    (repo / "pki.toml").write_text((repo / "pki.toml").read_text().replace('"api.internal"', '"api2.internal"'))
    r = pki("apply", str(plan_file), expect=1)
    assert "pki.toml changed since it was made" in r.stderr
    assert _snapshot(repo) == before


def test_a_saved_plan_made_with_at_ahead_is_planned_again_as_of_the_same_times(saved, tmp_path):
    repo, pki, plan_file = saved
    pki.apply()
    ahead = tmp_path / "ahead.json"
    pki.ok("plan", "--at", "+85d", "--out", str(ahead))  # the 90-day leaves are due by then
    data = json.loads(ahead.read_text())
    assert {c["name"] for c in data["changes"]} >= {"server", "client", "api"} and "issued_at" in data
    pki("apply", str(ahead), expect=0)
    assert pki.plan_exit() == 0
    # 85 days is past a fresh 90-day leaf's renewal window (renew_before 10d): every run renews it
    again = pki.ok("plan", "--at", "+85d").stdout
    assert "every run with it renews certificate.server, certificate.client, certificate.api;" in again


@pytest.mark.parametrize("content", ["not json", "[]", '{"format_version": 1}',
                                     '{"format_version": 1, "changes": [], "at": "x", "replace": "root"}'])
def test_a_file_that_is_not_a_plan_is_refused_in_one_line(saved, content):
    repo, pki, plan_file = saved
    before = _snapshot(repo)
    plan_file.write_text(content)
    r = pki("apply", str(plan_file), expect=1)
    assert "is not a pkiascode plan" in assert_one_line(r.stderr.strip())
    assert _snapshot(repo) == before


def test_options_a_saved_plan_fixes_are_not_taken_again(saved):
    repo, pki, plan_file = saved
    for option in (["--at", "+1d"], ["--replace", "root"], ["--rekey-missing"]):
        r = pki("apply", str(plan_file), *option, expect=1)
        assert "a saved plan already fixes" in r.stderr
