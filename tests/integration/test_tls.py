"""`serve --tls-cert FILE --tls-key FILE`: HTTPS on a real live process (one, and `--workers 2`), a client that
verifies the self-signed certificate made here, https Location / meta.location, plain HTTP to the TLS port
failing, and a clear error for half or bad TLS options.

The certificate comes from the `openssl` binary (present wherever Python's ssl module is built): no new
Python dependency for one test (trustme would bring `cryptography`).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import TOKEN, LiveGateway, need_service, user_body

SCIM_TYPE = "application/scim+json"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        need_service("the openssl binary is not installed (it makes the test's self-signed certificate)")
    root = tmp_path_factory.mktemp("tls")
    key, cert = root / "key.pem", root / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "workers-2"])
def tls_gateway(
    request: pytest.FixtureRequest, cert: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    gateway = LiveGateway(tmp_path_factory.mktemp("live-tls"))
    gateway.start("--tls-cert", str(cert[0]), "--tls-key", str(cert[1]), "--workers", str(request.param))
    yield gateway
    gateway.stop()


def https(gateway: LiveGateway) -> str:
    return f"https://127.0.0.1:{gateway.port}/apps/demo/scim/v2"


def trusting(cert: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert[0]))  # verifies the chain and the host name (127.0.0.1 in its SAN)


async def test_https_with_a_verifying_client_and_https_locations(tls_gateway: LiveGateway, cert: tuple[Path, Path]) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": SCIM_TYPE}
    base = https(tls_gateway)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(cert))) as session:
        for i in range(4):  # several connections: with --workers 2 the kernel spreads them over both processes
            async with session.post(
                f"{base}/Users", json=user_body(f"tls{i}-{tls_gateway.port}@example.com"), headers=headers
            ) as resp:
                body = await resp.json(content_type=None)
                assert resp.status == 201, body
                assert resp.headers["Location"] == f"{base}/Users/{body['id']}"
                assert body["meta"]["location"] == resp.headers["Location"]
            async with session.get(resp.headers["Location"], headers=headers) as got:
                assert got.status == 200 and (await got.json(content_type=None))["id"] == body["id"]
        async with session.get(f"{base}/ServiceProviderConfig", headers=headers) as resp:
            assert (await resp.json(content_type=None))["meta"]["location"] == f"{base}/ServiceProviderConfig"
    for _ in range(300):  # with --workers, the first worker prints the banner once it has started
        if f"SCIM base URL: {base}" in tls_gateway.log.read_text():
            break
        await asyncio.sleep(0.1)
    assert f"SCIM base URL: {base}" in tls_gateway.log.read_text()


async def test_plain_http_to_the_tls_port_fails(tls_gateway: LiveGateway) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(
                f"http://127.0.0.1:{tls_gateway.port}/apps/demo/scim/v2/Users", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                await resp.read()
    # Byte for byte: no HTTP answer comes back to a plain-text request.
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_gateway.port)
    writer.write(f"GET /apps/demo/scim/v2/Users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert not answer.startswith(b"HTTP/"), answer[:200]
    assert b"Resources" not in answer


async def test_a_client_that_does_not_trust_the_certificate_refuses_it(tls_gateway: LiveGateway) -> None:
    async with aiohttp.ClientSession() as session:  # the system's trust store: a self-signed certificate is not in it
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(f"{https(tls_gateway)}/ServiceProviderConfig") as resp:
                await resp.read()


def tls_options_fail(*tls: str) -> str:
    from gateway.cli import build_parser
    from gateway.cli.common import Stop
    from gateway.cli.serve import tls_context

    with pytest.raises(Stop) as stopped:
        tls_context(build_parser().parse_args(["serve", *tls]))
    assert stopped.value.status == 2
    return str(stopped.value)


def test_half_or_bad_tls_options_are_a_clear_error(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    certificate, key = map(str, cert)
    # Once through the real command: it stops before serving, exit status 2.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            "1",
            "--tls-cert",
            certificate,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "SCIM base URL" not in run.stdout, (run.stdout, run.stderr)
    assert "--tls-cert and --tls-key go together" in run.stderr
    # The rest on the same function the command calls.
    assert "--tls-cert and --tls-key go together" in tls_options_fail("--tls-key", key)
    assert "No such file or directory" in tls_options_fail("--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", key)
    assert "its own private key" in tls_options_fail("--tls-cert", key, "--tls-key", certificate)
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", key, "-aes256", "-passout", "pass:pw", "-out", str(encrypted)], check=True, timeout=30
    )
    message = tls_options_fail("--tls-cert", certificate, "--tls-key", str(encrypted))
    assert "the private key is encrypted" in message  # and no passphrase prompt: a service has no terminal
    assert "BEGIN" not in message  # no key material echoed
