"""The HTTP side of every server (runtime/http.py): tokens, TLS, the JSON error shape, ports, stop.

Real servers on loopback, real HTTP requests (urllib, ssl): no test client in between.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import APIRouter

from rewind.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from rewind_buffer.server import build
from rewind_buffer.settings import BufferServiceSettings
from rewind_checkpoint.settings import CheckpointSettings
from rewind_runtime.auth import Authenticator
from rewind_runtime.http import HttpHost
from rewind_runtime.local import LocalService
from rewind_runtime.tls import ServerTLS
from rewind_trainer.settings import TrainSettings
from tests.support.auth import COLLECTOR_TOKEN, READ_TOKEN, WRITE_TOKEN, make_tokens
from tests.support.configs import SMALL
from tests.support.pki import make_pki


@dataclass
class Answer:
    status: int
    headers: object  # email.message.Message: get_all() for repeated headers
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def error(self) -> dict:
        return self.json()["error"]


def call(url: str, *, token: str = "", basic: str = "", method: str = "GET", context: ssl.SSLContext | None = None,
         accept: str = "") -> Answer:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if basic:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"anyone:{basic}".encode()).decode())
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers, exc.read())


@pytest.fixture
def tokens(tmp_path):
    return make_tokens(tmp_path / "tokens")


@pytest.fixture
def secured(tokens):
    """A buffer service with read and write tokens, serving HTTP on a free port."""
    host, _ = build(SMALL.replace(port=0, read_tokens_file=tokens.read_file, write_tokens_file=tokens.write_file,
                                  collector_tokens_file=tokens.collector_file))
    host.start()
    yield host
    host.stop(grace_s=0)


def base(host) -> str:
    return f"http://127.0.0.1:{host.http_port}"


def test_healthz_is_open_and_every_other_route_needs_a_token(secured, tokens):
    url = base(secured)
    assert (call(f"{url}/healthz").status, call(f"{url}/healthz").json()) == (200, {"status": "SERVING"})
    missing = call(f"{url}/metrics")
    assert missing.status == 401
    assert missing.error["code"] == "UNAUTHENTICATED"
    assert "bearer token" in missing.error["message"]
    # A browser shows its login box for Basic (any user name, the token as password).
    assert 'Basic realm="rewind"' in missing.headers.get_all("WWW-Authenticate")
    bad = call(f"{url}/metrics", token="not-a-token")
    assert (bad.status, bad.error["code"]) == (401, "UNAUTHENTICATED")
    assert 'Basic realm="rewind"' in bad.headers.get_all("WWW-Authenticate")
    assert call(f"{url}/metrics", basic="not-a-token").status == 401
    read = call(f"{url}/metrics", token=READ_TOKEN)
    assert read.status == 200
    assert read.headers["Content-Type"].startswith("text/plain")
    assert b"rewind_rpc_requests_total" in read.body
    assert call(f"{url}/metrics", basic=READ_TOKEN).status == 200
    schema = call(f"{url}/openapi.json", token=READ_TOKEN)
    assert schema.status == 200 and {"/healthz", "/metrics"} <= set(schema.json()["paths"])
    assert call(f"{url}/openapi.json").status == 401
    assert call(f"{url}/docs", token=READ_TOKEN).status == 404  # no page that loads a CDN


def test_malformed_credentials_are_named(secured):
    url = f"{base(secured)}/metrics"
    for authorization, message in (
            ("Basic not-base64!", "authorization: Basic credentials are not base64 of 'user:token'"),
            ("Token abc", "authorization: expected 'Bearer <token>'")):
        request = urllib.request.Request(url, headers={"Authorization": authorization})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 401
        assert json.loads(answer.value.read())["error"] == {"code": "UNAUTHENTICATED", "message": message}


def test_anything_but_get_needs_a_write_token(secured, tokens):
    url = base(secured)
    denied = call(f"{url}/metrics", method="POST", token=READ_TOKEN)
    assert denied.status == 403
    assert denied.error == {"code": "PERMISSION_DENIED", "message": "POST /metrics: needs a write token; this read "
                                                                    "token (read token #1) may not call it"}
    assert denied.headers.get_all("WWW-Authenticate") is None
    # With a write token the request reaches the app, which has no POST /metrics.
    wrong_method = call(f"{url}/metrics", method="POST", token=WRITE_TOKEN)
    assert (wrong_method.status, wrong_method.error["code"]) == (405, "UNIMPLEMENTED")
    assert wrong_method.headers["Allow"] == "GET"


@pytest.fixture
def app_host():
    """A bare HttpHost (as `rewind ckpt web` uses it) with routes that fail in each way."""
    http = HttpHost(host="127.0.0.1", port=0)
    router = APIRouter()

    @router.get("/missing")
    def missing():
        raise NotFound("run: no run 'a/b' in the store")

    @router.get("/down")
    def down():
        raise Unavailable("store: the bucket cannot be reached")

    @router.get("/refused")
    def refused():
        raise PermissionDenied("path: outside the store")

    @router.get("/not-yet")
    def not_yet():
        raise FailedPrecondition("run: still uploading")

    @router.get("/steps/{step}")
    def step(step: int, limit: int = 10):
        return {"step": step, "limit": limit}

    @router.get("/crash")
    def crash():
        raise ZeroDivisionError("oops")

    http.app.include_router(router)
    http.start()
    yield http
    http.stop()


def test_errors_are_json_with_the_status_of_their_grpc_code(app_host):
    url = app_host.url
    for path, status, code in (("/missing", 404, "NOT_FOUND"), ("/down", 503, "UNAVAILABLE"),
                               ("/refused", 403, "PERMISSION_DENIED"), ("/not-yet", 400, "FAILED_PRECONDITION"),
                               ("/crash", 500, "INTERNAL")):
        answer = call(url + path)
        assert (answer.status, answer.error["code"]) == (status, code), path
        assert answer.headers["Content-Type"] == "application/json"
    assert call(f"{url}/missing").error["message"] == "run: no run 'a/b' in the store"
    assert call(f"{url}/crash").error["message"] == "internal error (ZeroDivisionError); the server log has details"
    assert call(f"{url}/steps/12?limit=3").json() == {"step": 12, "limit": 3}
    bad_path = call(f"{url}/steps/twelve")
    assert (bad_path.status, bad_path.error["code"]) == (400, "INVALID_ARGUMENT")
    assert bad_path.error["message"].startswith("step: ")
    bad_query = call(f"{url}/steps/12?limit=many")
    assert bad_query.status == 400 and bad_query.error["message"].startswith("limit: ")
    unknown = call(f"{url}/no/such/route")
    assert unknown.status == 404
    assert unknown.error == {"code": "NOT_FOUND", "message": "path: no route '/no/such/route'; GET /openapi.json "
                                                             "lists them"}


def test_a_browser_gets_the_error_page_when_one_is_set(app_host):
    from fastapi.responses import HTMLResponse

    app_host.error_page = lambda request, status, code, message: HTMLResponse(f"<p>{code}: {message}</p>",
                                                                              status_code=status)
    page = call(f"{app_host.url}/missing", accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert (page.status, page.body) == (404, b"<p>NOT_FOUND: run: no run 'a/b' in the store</p>")
    assert call(f"{app_host.url}/missing", accept="*/*").error["code"] == "NOT_FOUND"  # fetch() gets JSON


def test_no_tokens_off_loopback_is_refused_for_http_too(tokens):
    with pytest.raises(FailedPrecondition, match="host: listening on 0.0.0.0 with no tokens"):
        HttpHost(host="0.0.0.0", port=0).start()
    secured = HttpHost(host="0.0.0.0", port=0, authenticator=Authenticator(tokens.read_file, tokens.write_file))
    secured.start()
    try:
        assert call(f"{secured.url}/healthz").status == 200
        assert secured.url == f"http://127.0.0.1:{secured.port}"
    finally:
        secured.stop()


def _threads_serving(port: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"rewind-http-{port}"]


def test_stop_frees_the_port_and_leaves_no_thread():
    host, _ = build(SMALL.replace(port=0))
    host.start()
    port = host.http_port
    assert port and port != host.port
    assert call(f"http://127.0.0.1:{port}/healthz").status == 200
    assert _threads_serving(port)
    host.stop(grace_s=0)
    assert host.http_port == port  # still tells where it was
    assert not _threads_serving(port)
    with socket.socket() as sock:
        # Free again for a new server (the request's connection may linger in TIME_WAIT, which
        # SO_REUSEADDR passes over; a socket still listening would not be).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def stop_at_once(stop, callers: int = 8) -> list[BaseException]:
    """Call `stop` from `callers` threads released together; what any of them raised (or left running)."""
    barrier, raised = threading.Barrier(callers), []

    def one() -> None:
        barrier.wait()
        try:
            stop()
        except BaseException as exc:  # any exception is the failure this looks for
            raised.append(exc)

    threads = [threading.Thread(target=one, name=f"stopper-{i}") for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return raised + [TimeoutError(t.name) for t in threads if t.is_alive()]


@pytest.mark.parametrize("which", ["service host", "http host"])
def test_any_number_of_concurrent_stops_end_cleanly(which, caplog):
    """SIGTERM twice starts two drain threads (ServiceHost.install_signal_handlers); a trainer with local
    services killed sends it to each. Every stop returns once the host is stopped, and none raises or logs."""
    if which == "service host":
        host, _ = build(SMALL.replace(port=0, http_port=0))
        host.start()
        port, stop = host.http_port, lambda: host.stop(grace_s=0)
    else:
        host = HttpHost(host="127.0.0.1", port=0)
        port, stop = host.start(), host.stop
    assert call(f"http://127.0.0.1:{port}/healthz").status == 200
    caplog.clear()  # start-up's own warnings (no tokens) are not the stops'
    with caplog.at_level("INFO"):
        assert stop_at_once(stop) == []
    assert [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR", "CRITICAL")] == []
    assert not _threads_serving(port)
    if which == "service host":
        assert host.stopped.is_set()
        assert [r.getMessage() for r in caplog.records].count("draining (grace 0.0s)") == 1  # one drain
    stop()  # and once more, after the fact


def test_a_taken_http_port_fails_the_start_with_its_name():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host, _ = build(SMALL.replace(port=0, http_port=taken.getsockname()[1]))
        with pytest.raises(Unavailable, match="http_port"):
            host.start()
        host.stop(grace_s=0)


def test_http_port_is_free_when_port_is_and_it_was_left_at_its_default():
    assert BufferServiceSettings(port=0).http_port_to_bind == 0
    assert BufferServiceSettings().http_port_to_bind == 50071
    assert BufferServiceSettings(port=50061).http_port_to_bind == 50071
    # A gRPC port that happens to be the HTTP default (a free port a test drew, say) moves HTTP off it.
    assert BufferServiceSettings(port=50071).http_port_to_bind == 0
    assert TrainSettings(port=50073).http_port_to_bind == 0
    with pytest.raises(InvalidArgument, match="http_port: 18080 is the gRPC port"):
        BufferServiceSettings(port=18080, http_port=18080)
    assert BufferServiceSettings(port=0, http_port=18080).http_port_to_bind == 18080
    assert BufferServiceSettings(port=0, http_port=-1).http_port_to_bind == -1
    assert CheckpointSettings(port=0).http_port_to_bind == 0
    assert CheckpointSettings().http_port_to_bind == 50072
    assert TrainSettings(port=0).http_port_to_bind == 0
    assert TrainSettings().http_port_to_bind == 50073
    host, _ = build(SMALL.replace(port=0, http_port=-1))
    assert (host.http, host.http_app, host.http_port) == (None, None, None)


def test_the_port_file_has_an_http_sibling(tmp_path):
    port_file = tmp_path / "port"
    host, _ = build(SMALL.replace(port=0, port_file=str(port_file)))
    host.start()
    try:
        assert int(port_file.read_text()) == host.port
        assert int(Path(f"{port_file}.http").read_text()) == host.http_port
    finally:
        host.stop(grace_s=0)


def test_healthz_says_not_serving_until_the_service_is_ready():
    host, _ = build(SMALL.replace(port=0))
    host.start(serving=False)
    try:
        answer = call(f"{base(host)}/healthz")
        assert (answer.status, answer.json()) == (503, {"status": "NOT_SERVING"})
        host.set_serving()
        assert call(f"{base(host)}/healthz").status == 200
    finally:
        host.stop(grace_s=0)


def test_local_service_reads_the_http_port(tmp_path):
    with LocalService(["buffer", "serve", "--min-history", "0"], cwd=tmp_path) as service:
        assert service.http_port and service.http_port != service.port
        assert service.http_url == f"http://127.0.0.1:{service.http_port}"
        assert call(f"{service.http_url}/healthz").json() == {"status": "SERVING"}
        assert b"rewind_buffer_transitions" in call(f"{service.http_url}/metrics").body


# -- TLS ---------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def client_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def tls_host(pki, *, mutual: bool = False):
    host, _ = build(SMALL.replace(port=0, tls_cert_file=pki.server.cert, tls_key_file=pki.server.key,
                                  tls_client_ca_file=pki.ca if mutual else ""))
    host.start()
    return host


def test_https_with_the_services_certificate_and_plaintext_refused(pki):
    host = tls_host(pki)
    try:
        url = f"https://127.0.0.1:{host.http_port}"
        assert host.http.url == url
        assert call(f"{url}/healthz", context=client_context(pki.ca)).status == 200
        assert call(f"https://localhost:{host.http_port}/metrics", context=client_context(pki.ca)).status == 200
        with pytest.raises(urllib.error.URLError):  # a certificate from an unknown CA
            call(f"{url}/healthz", context=ssl.create_default_context())
        with pytest.raises((ConnectionError, urllib.error.URLError)):  # plaintext to a TLS port
            call(f"http://127.0.0.1:{host.http_port}/healthz")
    finally:
        host.stop(grace_s=0)


def test_a_renewed_certificate_is_served_from_the_next_handshake(pki, tmp_path):
    renewed = make_pki(tmp_path / "renewed")  # a new CA too, so that the old trust tells them apart
    host = tls_host(pki)
    try:
        url = f"https://127.0.0.1:{host.http_port}/healthz"
        assert call(url, context=client_context(pki.ca)).status == 200
        shutil.copy(renewed.server.key, pki.server.key)
        shutil.copy(renewed.server.cert, pki.server.cert)  # as cert-manager renews a Secret in place
        assert call(url, context=client_context(renewed.ca)).status == 200
        with pytest.raises(urllib.error.URLError):
            call(url, context=client_context(pki.ca))
    finally:
        host.stop(grace_s=0)


def test_mtls_needs_a_client_certificate_from_the_ca(pki):
    host = tls_host(pki, mutual=True)
    try:
        url = f"https://127.0.0.1:{host.http_port}/healthz"
        assert call(url, context=client_context(pki.ca, pki.client.cert, pki.client.key)).status == 200
        for context in (client_context(pki.ca), client_context(pki.ca, pki.stranger.cert, pki.stranger.key)):
            with pytest.raises((ConnectionError, ssl.SSLError, urllib.error.URLError)):
                call(url, context=context)
    finally:
        host.stop(grace_s=0)


def test_tls_settings_reach_a_bare_http_host(pki):
    http = HttpHost(port=0, tls=ServerTLS(pki.server.cert, pki.server.key))
    http.start()
    try:
        assert call(f"{http.url}/healthz", context=client_context(pki.ca)).json() == {"status": "SERVING"}
    finally:
        http.stop()


def test_a_collector_token_gets_no_http_route(secured, tokens):
    # A collector's methods are gRPC's (adding episodes, weights, checkpoint lookups): no page, no /metrics.
    denied = call(f"{base(secured)}/metrics", token=COLLECTOR_TOKEN)
    assert denied.status == 403
    assert denied.error == {"code": "PERMISSION_DENIED", "message": "GET /metrics: needs a write or read token; this "
                                                                    "collector token (collector-7) may not call it"}
    assert call(f"{base(secured)}/metrics", token=READ_TOKEN).status == 200
