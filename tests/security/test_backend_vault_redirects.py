"""No redirect is followed (review finding 8): requests resends X-Vault-Token on a redirect to another
host (it strips only Authorization), so an answer 3xx from the Vault address is a one-line error
naming the status and where it points, and the token never goes there.

A redirector on 127.0.0.1 (the Vault address of the test) answers ``sys/seal-status`` as a Vault
would, so the store goes on to a request that carries the token, and answers every other request
with a 307 to a second listener on 127.0.0.1, which records whatever reaches it: it must see nothing.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from helpers import SMALL_PKI, Pki, assert_one_line, clean_env, git_init, write_project
from pkiascode.errors import BackendUnavailable

# the store factory of tests/vault; these tests need no Vault server
from vault.conftest import make_store  # noqa: F401

TOKEN = "s.RedirectTestToken0123456789abcdef"


class Server:
    """A tiny HTTP server on 127.0.0.1 in a thread; ``answer(handler)`` answers each request."""

    def __init__(self, answer) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                server.requests.append((self.command, self.path, dict(self.headers)))
                answer(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _any

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def reply(handler, status: int, body: bytes = b"{}", **headers: str) -> None:
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """(redirector, elsewhere): the redirector sends everything but sys/seal-status to elsewhere."""
    elsewhere = Server(lambda h: reply(h, 200, b'{"data": {"id": "stolen"}}'))
    host = elsewhere.address.removeprefix("http://")

    def redirect(handler) -> None:
        if handler.path == "/v1/sys/seal-status":
            reply(handler, 200, b'{"initialized": true, "sealed": false}')
        else:
            reply(handler, 307, b"", Location=f"http://{host}{handler.path}")

    redirector = Server(redirect)
    yield redirector, elsewhere
    redirector.close()
    elsewhere.close()


def test_a_redirect_is_an_error_and_the_token_goes_nowhere_else(servers, make_store, monkeypatch, tmp_path):
    redirector, elsewhere = servers
    host = elsewhere.address.removeprefix("http://")
    monkeypatch.setenv("VAULT_ADDR", redirector.address)
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)
    store = make_store(timeout=5)
    with pytest.raises(BackendUnavailable) as info:
        store.check()
    line = assert_one_line(str(info.value), TOKEN)
    assert f"answered 307 to GET auth/token/lookup-self, a redirect to {host!r}" in line, line
    assert [r[:2] for r in redirector.requests] == [("GET", "/v1/sys/seal-status"),
                                                   ("GET", "/v1/auth/token/lookup-self")]
    assert redirector.requests[1][2].get("X-Vault-Token") == TOKEN  # $VAULT_ADDR's, where it belongs

    # the same through the command line: apply stops with the one line, nothing written
    repo = tmp_path / "repo"
    git_init(repo)
    write_project(repo, '[backend.vault]\nplugin = "vault"\n\n'
                  + SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n'))
    result = Pki(repo, clean_env(VAULT_ADDR=redirector.address, VAULT_TOKEN=TOKEN))("apply", "--auto-approve",
                                                                                     expect=1)
    line = assert_one_line(result.stderr.strip(), TOKEN)
    assert "answered 307" in line and f"a redirect to {host!r}" in line, line
    assert not (repo / "state").exists()
    assert elsewhere.requests == []
