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
    Pki, assert_one_line, assert_state_sound, commit_all, commit_count, head, inventory, key_files, tree_snapshot,
)

API = '\n[certificate.api]\nissuer = "inter"\ncommon_name = "api"\nhosts = ["api.internal"]\n'


@pytest.fixture
def saved(applied: tuple[Path, Pki], tmp_path: Path) -> tuple[Path, Pki, Path]:
    """An applied PKI, then a pki.toml change (a new certificate) planned into plan.json."""
    repo, pki = applied
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


def test_at_is_fixed_by_a_saved_plan_and_not_taken_again(saved):
    repo, pki, plan_file = saved
    r = pki("apply", str(plan_file), "--at", "+1d", expect=1)
    assert "a saved plan already fixes --at" in r.stderr


@pytest.mark.parametrize("option, says", [
    (["--replace", "root"], "--replace root: the saved plan {f} does not replace it"),
    (["--rekey-missing"], "--rekey-missing: the saved plan {f} was made without it"),
])
def test_a_confirmation_the_saved_plan_does_not_need_is_refused(saved, option, says):
    repo, pki, plan_file = saved
    before = _snapshot(repo)
    r = pki("apply", str(plan_file), *option, expect=1)
    assert says.format(f=plan_file) in assert_one_line(r.stderr.strip())
    assert _snapshot(repo) == before


# -- review F17: the file is not authenticated, so what cannot be undone is confirmed where apply runs --

def _replace_root_too(d: dict[str, Any]) -> None:
    d["replace"] = ["root"]


@pytest.mark.parametrize("how", ["made with --replace root", "replace edited with the changes"])
def test_a_saved_plan_that_rekeys_the_root_needs_replace_on_the_apply_command_line(saved, tmp_path, how):
    repo, pki, plan_file = saved
    evil = tmp_path / "evil.json"
    if how == "made with --replace root":
        pki.ok("plan", "--replace", "root", "--out", str(evil))
    else:  # the attacker writes replace and the changes planning again gives for it: an identical plan
        honest = tmp_path / "honest.json"
        pki.ok("plan", "--replace", "root", "--out", str(honest))
        data = json.loads(plan_file.read_text())
        data.update({k: v for k, v in json.loads(honest.read_text()).items() if k in ("replace", "changes", "summary")})
        evil.write_text(json.dumps(data, indent=2) + "\n")
    assert json.loads(evil.read_text())["replace"] == ["root"]
    before = _snapshot(repo)
    root_key = inventory(repo)["root"]["key"]["ref"]
    r = pki("apply", str(evil), expect=1)
    line = assert_one_line(r.stderr.strip())
    assert line == (f"Error: {evil} replaces root (a new key; cannot be undone): a saved plan is not authenticated, "
                    f"so confirm it with `pki apply {evil} --replace root`; nothing changed"), line
    assert _snapshot(repo) == before and inventory(repo)["root"]["key"]["ref"] == root_key
    if how == "made with --replace root":  # confirmed on the command line: applied as made
        r = pki("apply", str(evil), "--replace", "root", expect=0)
        assert inventory(repo)["root"]["key"]["ref"] != root_key
        assert_state_sound(repo, pki, exact_keys=True)


def test_a_saved_plan_with_a_replace_the_apply_command_line_does_not_repeat_is_refused(saved, tmp_path):
    repo, pki, plan_file = saved
    both = tmp_path / "both.json"
    pki.ok("plan", "--replace", "root", "--replace", "server", "--out", str(both))
    before = _snapshot(repo)
    r = pki("apply", str(both), "--replace", "server", expect=1)  # root not confirmed
    assert "replaces root (a new key; cannot be undone)" in assert_one_line(r.stderr.strip())
    assert _snapshot(repo) == before
    pki("apply", str(both), "--replace", "server", "--replace", "root", expect=0)


def test_a_saved_plan_made_with_rekey_missing_needs_it_on_the_apply_command_line(applied, tmp_path):
    repo, pki = applied
    ref = inventory(repo)["inter"]["key"]["ref"]
    (repo / ".pki" / "keys" / ref).unlink()  # an authority's key lost
    plan_file = tmp_path / "plan.json"
    pki.ok("plan", "--rekey-missing", "--out", str(plan_file))
    before = _snapshot(repo)
    r = pki("apply", str(plan_file), expect=1)
    assert (f"{plan_file} was made with --rekey-missing (a missing key gets a new one; cannot be undone)"
            in assert_one_line(r.stderr.strip()))
    assert _snapshot(repo) == before
    pki("apply", str(plan_file), "--rekey-missing", expect=0)
    assert inventory(repo)["inter"]["key"]["ref"] != ref
