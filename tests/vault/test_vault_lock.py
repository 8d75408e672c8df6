"""The cross-machine apply lock: a lease in KV v2, every change a check-and-set write."""

from __future__ import annotations

import threading
import time

import pytest

from pkiascode.errors import BackendUnavailable, LockError

pytestmark = pytest.mark.vault

# the core's holder_info() spells the user "actor" and the start "since"; "user"/"time" work too
ALICE = {"actor": "alice", "host": "ci-runner-7", "pid": "4242", "since": "2026-01-02T03:04:05Z"}
BOB = {"user": "bob", "host": "laptop", "pid": "99", "time": "2026-01-02T03:05:00Z"}


def lock_record(server, store, lock_id: str) -> dict:
    path = f"{store.kv_mount}/data/{store.prefix}/locks/{store.lock_name(lock_id)}"
    return server.api("GET", path)[1]["data"]


def test_second_holder_is_refused_with_the_holders_name(vault_env, make_store):
    a, b = make_store(), make_store()
    with a.lock("state", ALICE):
        with pytest.raises(LockError) as error:
            with b.lock("state", BOB):
                pytest.fail("two holders at once")
        text = str(error.value)
        assert "\n" not in text and vault_env.token not in text
        assert "alice@ci-runner-7 (pid 4242) since 2026-01-02T03:04:05Z" in text
        assert "lock_timeout" in text
        with b.lock("another-state", BOB):  # locks are per state
            pass
    with b.lock("state", BOB):  # released
        pass


def test_release_is_a_cas_write_never_a_delete(vault_env, make_store):
    store = make_store()
    with store.lock("state", ALICE):
        held = lock_record(vault_env, store, "state")
        assert held["data"]["state"] == "held" and held["data"]["user"] == "alice"
    released = lock_record(vault_env, store, "state")
    assert released["data"]["state"] == "free"
    assert released["metadata"]["version"] == held["metadata"]["version"] + 1
    assert released["metadata"]["deletion_time"] == ""


def test_a_stale_lock_is_taken_over(vault_env, make_store):
    store = make_store(lock_ttl=1)
    path = f"secret/data/{store.prefix}/locks/state"
    # a holder that died: its record is held, and nobody renews it
    vault_env.api("POST", path, {"options": {"cas": 0}, "data": {"state": "held", "user": "ghost", "host": "gone",
                                                                  "pid": "1", "since": "then", "ttl": 1}})
    with pytest.raises(LockError, match="ghost@gone"):
        with store.lock("state", ALICE):
            pass
    time.sleep(1.1)
    with store.lock("state", ALICE):
        assert lock_record(vault_env, store, "state")["data"]["user"] == "alice"


def test_the_lease_is_renewed_while_held(vault_env, make_store):
    a = make_store(lock_ttl=1)
    b = make_store(lock_ttl=1)
    with a.lock("state", ALICE):
        first = lock_record(vault_env, a, "state")["metadata"]["version"]
        time.sleep(1.6)  # longer than the lease: only renewal keeps it
        with pytest.raises(LockError, match="alice@ci-runner-7"):
            with b.lock("state", BOB):
                pass
        assert lock_record(vault_env, a, "state")["metadata"]["version"] >= first + 2


def test_waiting_for_the_lock(vault_env, make_store):
    a = make_store()
    b = make_store(lock_timeout="10s")
    held = a.lock("state", ALICE)
    held.__enter__()
    threading.Timer(0.5, held.__exit__, (None, None, None)).start()
    started = time.monotonic()
    with b.lock("state", BOB):
        assert lock_record(vault_env, b, "state")["data"]["user"] == "bob"
    assert 0.4 < time.monotonic() - started < 5


def test_a_lock_lost_to_a_takeover_is_reported(vault_env, make_store):
    store = make_store(lock_ttl=60)
    path = f"secret/data/{store.prefix}/locks/state"
    with pytest.raises(LockError, match="was lost"):
        with store.lock("state", ALICE) as _:
            version = lock_record(vault_env, store, "state")["metadata"]["version"]
            # someone decided the lease was over and took it (a CAS write of their own)
            vault_env.api("POST", path, {"options": {"cas": version},
                                         "data": {"state": "held", "user": "mallory", "host": "h", "ttl": 60}})
    # the release did not free mallory's lock
    assert lock_record(vault_env, store, "state")["data"]["user"] == "mallory"


def test_lock_ids_become_safe_distinct_paths(vault_env, make_store):
    store = make_store()
    names = {store.lock_name(x) for x in ("/srv/pki/state", "srv-pki-state", "srv/pki/state", "a b")}
    assert len(names) == 4 and all("/" not in n and " " not in n for n in names)
    with store.lock("/srv/pki/state", ALICE):
        pass


def test_lock_faults_are_clear(vault_env, make_store, monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", "wrong-token-123")
    with pytest.raises(BackendUnavailable, match=r"rejected the token in \$VAULT_TOKEN"):
        with make_store().lock("state", ALICE):
            pass


def test_server_gone_mid_apply_the_lock_expires_by_itself(bao_file_server, make_store, monkeypatch, caplog):
    server = bao_file_server
    if not server.running:
        server.start()
    monkeypatch.setenv("VAULT_ADDR", server.address)
    monkeypatch.setenv("VAULT_TOKEN", server.token)
    a = make_store(lock_ttl=1)
    b = make_store(lock_ttl=1)
    try:
        with a.lock("state", ALICE):  # the apply goes on while Vault dies and comes back
            server.stop(kill=True)
            time.sleep(0.5)
            server.start()
            with pytest.raises(LockError, match="alice"):
                with b.lock("state", BOB):
                    pass
            server.stop(kill=True)
        assert "will expire by itself" in caplog.text  # the release could not be written: said, not raised
    finally:
        server.start()
    time.sleep(1.1)
    with b.lock("state", BOB):
        pass


def test_of_many_simultaneous_acquirers_exactly_one_wins(vault_env, make_store):
    stores = [make_store() for _ in range(6)]  # one prefix per test: all contend for one lock
    barrier = threading.Barrier(len(stores))
    results: list[str] = []

    def contend(i: int) -> None:
        barrier.wait()
        try:
            with stores[i].lock("state", {**ALICE, "pid": str(i)}):
                results.append("won")
                time.sleep(0.5)
        except LockError:
            results.append("refused")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["refused"] * 5 + ["won"]


def test_confirm_proves_the_lock_is_still_held_and_renews_it(vault_env, make_store):
    store = make_store(lock_ttl=60)
    path = f"secret/data/{store.prefix}/locks/state"
    lock = store.lock("state", ALICE)
    with pytest.raises(LockError, match="was lost"):
        with lock:
            version = lock_record(vault_env, store, "state")["metadata"]["version"]
            lock.confirm()  # a check-and-set write against our version: ours, and renewed
            assert lock_record(vault_env, store, "state")["metadata"]["version"] == version + 1
            assert lock.check == lock.confirm  # the name the core's apply lock calls
            # another apply decided the lease was over and took it (a CAS write of its own)
            vault_env.api("POST", path, {"options": {"cas": version + 1},
                                         "data": {"state": "held", "user": "mallory", "host": "h", "ttl": 60}})
            with pytest.raises(LockError, match=r"the lock on state 'state' was lost while applying \(another apply "
                                                r"took it over\); stopped before changing more"):
                lock.confirm()
    assert lock_record(vault_env, store, "state")["data"]["user"] == "mallory"  # neither confirm nor release wrote


def test_confirm_without_vault_stops_the_apply(vault_env, make_store):
    store = make_store(lock_ttl=60)
    lock = store.lock("state", ALICE)
    try:
        with pytest.raises(LockError, match="cannot confirm that this apply still holds the lock"):
            with lock:
                vault_env.stop()
                lock.confirm()
    finally:
        vault_env.start()
