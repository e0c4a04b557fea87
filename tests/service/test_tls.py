"""TLS and mTLS round trips through the SDK, with certificates made at test time, and their renewal."""

from __future__ import annotations

import shutil

import pytest

from rewind import BufferClient
from rewind.errors import InvalidArgument, PermissionDenied, Unavailable
from rewind.security import ClientSecurity, split_token_line
from rewind_buffer.server import serve
from tests.support.auth import make_tokens
from tests.support.configs import SMALL
from tests.support.episodes import episode
from tests.support.pki import make_pki


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def tls_service(pki, *, mutual: bool = False, **more):
    return serve(SMALL.replace(port=0, tls_cert_file=pki.server.cert, tls_key_file=pki.server.key,
                               tls_client_ca_file=pki.ca if mutual else "", **more))


def test_tls_with_a_token_round_trips_and_plaintext_is_refused(pki, tmp_path):
    tokens = make_tokens(tmp_path / "tokens")
    host = tls_service(pki, read_tokens_file=tokens.read_file, write_tokens_file=tokens.write_file)
    try:
        secure = ClientSecurity(token_file=tokens.write.token_file, tls_ca_file=pki.ca)
        with BufferClient(host.address, security=secure, timeout=5) as client:
            client.add(episode(0, 60))
            assert client.stats().episodes == 1
        with BufferClient(host.address, security=ClientSecurity(token_file=tokens.write.token_file),
                          timeout=2) as plaintext:
            with pytest.raises(Unavailable):
                plaintext.stats()
        # The certificate names localhost and 127.0.0.1; any other name must fail verification.
        wrong_name = ClientSecurity(token_file=tokens.write.token_file, tls_ca_file=pki.ca,
                                    tls_server_name="buffer.example")
        with BufferClient(host.address, security=wrong_name, timeout=2) as client, pytest.raises(Unavailable):
            client.stats()
    finally:
        host.stop(grace_s=0.5)


def test_mtls_needs_a_client_certificate_from_the_ca(pki):
    host = tls_service(pki, mutual=True)
    try:
        ok = ClientSecurity(tls_ca_file=pki.ca, tls_client_cert_file=pki.client.cert,
                            tls_client_key_file=pki.client.key)
        with BufferClient(host.address, security=ok, timeout=5) as client:
            client.add(episode(0, 60))
            assert client.stats().episodes == 1
        for security in (ClientSecurity(tls_ca_file=pki.ca),
                         ClientSecurity(tls_ca_file=pki.ca, tls_client_cert_file=pki.stranger.cert,
                                        tls_client_key_file=pki.stranger.key)):
            with BufferClient(host.address, security=security, timeout=2) as client, pytest.raises(Unavailable):
                client.stats()
    finally:
        host.stop(grace_s=0.5)


def test_a_renewed_certificate_is_served_without_a_restart(pki, tmp_path):
    renewed = make_pki(tmp_path / "renewed")  # a new CA too, so the old clients' trust tells them apart
    host = tls_service(pki)
    try:
        with BufferClient(host.address, security=ClientSecurity(tls_ca_file=pki.ca), timeout=5) as old:
            old.add(episode(0, 60))
        shutil.copy(renewed.server.key, pki.server.key)
        shutil.copy(renewed.server.cert, pki.server.cert)  # as cert-manager renews a Secret in place
        with BufferClient(host.address, security=ClientSecurity(tls_ca_file=renewed.ca), timeout=5) as new:
            assert new.stats().episodes == 1
        with BufferClient(host.address, security=ClientSecurity(tls_ca_file=pki.ca), timeout=2) as old:
            with pytest.raises(Unavailable):
                old.stats()
    finally:
        host.stop(grace_s=0.5)


def test_bad_tls_settings_are_named(pki, tmp_path):
    with pytest.raises(InvalidArgument, match="tls_cert_file, tls_key_file: give both"):
        SMALL.replace(tls_cert_file=pki.server.cert)
    with pytest.raises(InvalidArgument, match="tls_client_ca_file: client certificates need TLS"):
        SMALL.replace(tls_client_ca_file=pki.ca)
    with pytest.raises(InvalidArgument, match="tls_ca_file: .*missing.crt is not a readable file"):
        ClientSecurity(tls_ca_file=str(tmp_path / "missing.crt"))
    with pytest.raises(InvalidArgument, match="tls_client_cert_file, tls_client_key_file: give both"):
        ClientSecurity(tls_ca_file=pki.ca, tls_client_cert_file=pki.client.cert)


def test_rewind_secrets_init_makes_a_working_set_and_keeps_it(tmp_path):
    from tests.support.processes import rewind

    folder = tmp_path / "secrets"
    first = rewind("secrets", "init", "--dir", str(folder), "--hosts", "localhost,127.0.0.1")
    assert first.returncode == 0, first.stderr
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        "read.token": 0o600, "write.token": 0o600, "collector.token": 0o600, "ca.key": 0o600, "tls.key": 0o600,
        "ca.crt": 0o644, "tls.crt": 0o644}
    # The collector's token is a named line, so the services' logs say whose it is.
    [line] = (folder / "collector.token").read_text().splitlines()
    assert split_token_line(line)[0] == "collector" and len(split_token_line(line)[1]) >= 43
    tokens = {(folder / name).read_text() for name in ("read.token", "write.token", "collector.token")}
    assert len({t.rsplit(":", 1)[-1] for t in tokens}) == 3
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    again = rewind("secrets", "init", "--dir", str(folder))
    assert again.returncode == 0 and "kept read.token, write.token, collector.token, ca.crt" in again.stdout
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # a restarted init changes nothing
    # A set made before collector.token existed gains it, and keeps the rest.
    (folder / "collector.token").unlink()
    older = rewind("secrets", "init", "--dir", str(folder))
    assert older.returncode == 0 and f"wrote {folder / 'collector.token'}" in older.stdout, older.stdout
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "collector.token"} == {
        k: v for k, v in before.items() if k != "collector.token"}
    host = serve(SMALL.replace(port=0, read_tokens_file=str(folder / "read.token"),
                               write_tokens_file=str(folder / "write.token"),
                               collector_tokens_file=str(folder / "collector.token"),
                               tls_cert_file=str(folder / "tls.crt"), tls_key_file=str(folder / "tls.key")))
    try:
        def security(name: str) -> ClientSecurity:
            return ClientSecurity(token_file=str(folder / name), tls_ca_file=str(folder / "ca.crt"))

        with BufferClient(host.address, security=security("write.token"), timeout=5) as client:
            client.add(episode(0, 60))
        with BufferClient(host.address, security=security("collector.token"), timeout=5) as client:
            client.add(episode(1, 60))  # a collector adds episodes
            with pytest.raises(PermissionDenied, match="Sample: needs a write token"):
                client.sample()  # and does nothing else
        with BufferClient(host.address, security=security("read.token"), timeout=5) as client:
            assert client.stats().episodes == 2
    finally:
        host.stop(grace_s=0.5)


def test_buf_curl_round_trips_over_mtls(pki, tmp_path):
    import json

    from tests.support.curl import curl

    tokens = make_tokens(tmp_path / "tokens")
    host = tls_service(pki, mutual=True, read_tokens_file=tokens.read_file, write_tokens_file=tokens.write_file)
    try:
        url = f"https://{host.address}/rewind.buffer.v1.BufferService/GetStats"
        bearer = f"authorization: Bearer {open(tokens.read.token_file).read().strip()}"
        ok = curl(host.address, "--cacert", pki.ca, "--cert", pki.client.cert, "--key", pki.client.key, "-H", bearer,
                  url, data={"buffer": "buffer"})
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["stats"]["name"] == "buffer"
        no_certificate = curl(host.address, "--cacert", pki.ca, "-H", bearer, url, data={"buffer": "buffer"})
        assert no_certificate.returncode != 0
    finally:
        host.stop(grace_s=0.5)
