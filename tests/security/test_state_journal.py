"""Threat: whoever can write ``.pki/journal`` makes the next apply write or delete files anywhere
(issue 10: "writes and deletes outside the repository from .pki/journal").

The transaction file and the key journal are input like any other: parsed against their schema,
every path in them a state file name, every key a store name and a reference without ``..``. A
forged one is an error naming the file, and nothing outside the repository is written or deleted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, assert_one_line, head, new_repo, tree_snapshot


@pytest.fixture
def interrupted(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Pki]:
    """A project whose first apply was killed right after its transaction file was written."""
    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    pki = Pki(repo)
    assert pki("apply", "--auto-approve", env={"PKI_TEST_CRASH_AT": "after-txn"}).returncode == 137
    assert (repo / ".pki/journal/txn.json").exists()
    return repo, pki


def _forge_header(txn: Path, edit) -> None:
    """Edit the JSON header of a transaction file (its second line), keeping the contents after it."""
    data = txn.read_bytes()
    magic_end = data.index(b"\n") + 1
    header_end = data.index(b"\n", magic_end)
    header = json.loads(data[magic_end:header_end])
    edit(header)
    txn.write_bytes(data[:magic_end] + json.dumps(header).encode() + data[header_end:])


@pytest.mark.parametrize("forgery", ["file-path", "absolute-path", "config-path", "retired-key"])
def test_a_forged_transaction_writes_nothing_outside_the_repository(interrupted, tmp_path, forgery):
    repo, pki = interrupted
    txn = repo / ".pki/journal/txn.json"
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.pem"
    victim.write_text("not pkiascode's\n")

    def edit(header: dict) -> None:
        files = header["files"]
        rel, length = next((k, v) for k, v in files.items() if v is not None)
        if forgery == "file-path":  # the content of a certificate, written to ../../outside/victim.pem
            del files[rel]
            files["certs/../../../outside/victim.pem"] = length
        elif forgery == "absolute-path":
            del files[rel]
            files[str(victim)] = length
        elif forgery == "config-path":
            header["config"] = {"path": "../outside/victim.pem", "content": "owned\n"}
        else:
            header["retire_keys"] = [["local", "../../outside/victim.pem"]]

    _forge_header(txn, edit)
    before = tree_snapshot(outside)
    for command in (("plan",), ("apply", "--auto-approve")):
        r = pki(*command, expect=1)
        line = assert_one_line(r.stderr.strip().splitlines()[-1])
        assert "txn.json is damaged" in line
    assert tree_snapshot(outside) == before
    assert not (repo / "state" / "inventory.json").exists() and head(repo) is not None
    assert victim.read_text() == "not pkiascode's\n"


def _journal(repo: Path) -> Path:
    return repo / ".pki/journal/keys.jsonl"


@pytest.mark.parametrize("line", [
    {"intent": {"store": "local", "request": {"name": "../../outside/victim", "key_type": "ecdsa-p256",
                                              "authority": False, "exportable": True, "suffix": "0badc0de"}}},
    {"intent": {"store": "local", "request": {"name": "server", "key_type": "ecdsa-p256", "authority": False,
                                              "exportable": True, "suffix": "/../../x"}}},
    {"store": "local", "id": "../../../outside/victim.pem", "suffix": "0badc0de"},
    {"store": "../local", "id": "server-0badc0de.pem", "suffix": "0badc0de"},
], ids=["intent-name", "intent-suffix", "answer-id", "answer-store"])
def test_a_forged_key_journal_deletes_nothing_outside_the_key_directory(tmp_path, env, line):
    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    pki = Pki(repo)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("victim.pem", "victim-0badc0de.pem", "victim-0badc0de.noexport.pem"):
        (outside / name).write_text("not pkiascode's\n")
    before = tree_snapshot(outside)
    _journal(repo).parent.mkdir(parents=True, mode=0o700)
    (repo / ".pki").chmod(0o700)
    # a forged line, then a good one: not a torn last line, which a crash leaves and is skipped
    _journal(repo).write_text(json.dumps(line) + "\n" + json.dumps({"store": "local", "id": None, "suffix": None})
                              + "\n")
    r = pki("apply", "--auto-approve", expect=1)
    text = assert_one_line(r.stderr.strip().splitlines()[-1])
    assert "keys.jsonl:1: not a key journal line" in text
    assert tree_snapshot(outside) == before
    assert head(repo) is not None and not (repo / "state" / "inventory.json").exists()


def test_a_torn_last_journal_line_is_what_a_crash_leaves_and_is_skipped(tmp_path, env):
    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    pki = Pki(repo)
    _journal(repo).parent.mkdir(parents=True, mode=0o700)
    (repo / ".pki").chmod(0o700)
    _journal(repo).write_text('{"store": "local", "id": "server-0bad')
    r = pki.apply()
    assert "Apply complete: 4 created" in r.stdout
    assert not _journal(repo).exists()


@pytest.mark.parametrize("name", ["deletes.json", "uncommitted.json"])
def test_forged_pending_deletions_are_an_error_naming_the_file(tmp_path, env, name):
    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    pki = Pki(repo)
    pki.apply()
    victim = tmp_path / "victim.pem"
    victim.write_text("not pkiascode's\n")
    (repo / ".pki/journal").mkdir(parents=True, mode=0o700, exist_ok=True)
    (repo / ".pki/journal" / name).write_text(json.dumps([["local", "../../victim.pem"]]))
    r = pki("apply", "--auto-approve", expect=1)
    assert name in assert_one_line(r.stderr.strip().splitlines()[-1])
    assert victim.read_text() == "not pkiascode's\n"
