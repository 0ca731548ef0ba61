"""The callback address rule: submit-time validation and the pinned delivery session."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ValidationFailed
from shared.webhooks import url_policy as ssrf
from shared.webhooks.url_policy import (
    ForbiddenAddress,
    delivery_session,
    is_forbidden_address,
    validate_callback_url,
)

REFUSED_WHEN_PRIVATE_NOT_ALLOWED = [
    "http://[::1]/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://017700000001/",
    "http://127.1/",
    "http://0/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1:8080/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",  # CGNAT
    "http://100.100.100.200/",  # Alibaba metadata
    "http://168.63.129.16/",  # Azure wire server, a public address
    "http://224.0.0.1/",  # multicast
    "http://240.0.0.1/",  # reserved
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[2002:7f00:1::]/",  # 6to4 wrapping 127.0.0.1
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[::]/",
    "https://localhost/hook",
]

REFUSED_ALWAYS = {
    "http://user@127.0.0.1/": "credentials",
    "https://user:pw@example.com/": "credentials",
    "file:///etc/passwd": "scheme",
    "gopher://x": "scheme",
    "ftp://example.com/": "scheme",
    "javascript:alert(1)": "scheme",
    "http:///path-only": "no_host",
    "http://exa mple.com/": "malformed",
    "http://example.com\\@127.0.0.1/": "malformed",
    "http://example.com:99999/": "malformed",
    "http://[::1/": "malformed",
    "": "malformed",
    "http://example.com/" + "a" * 2100: "too_long",
}


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A resolver the test scripts: name -> addresses; unknown names do not resolve."""
    table: dict[str, list[str]] = {}

    def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        if host not in table:
            raise OSError(f"unknown host {host}")
        return [ipaddress.ip_address(a) for a in table[host]]

    monkeypatch.setattr(ssrf, "_resolve", resolve)
    return table


@pytest.mark.parametrize("url", REFUSED_WHEN_PRIVATE_NOT_ALLOWED)
def test_internal_addresses_are_refused(url: str, fake_dns: dict[str, list[str]]) -> None:
    fake_dns["localhost"] = ["127.0.0.1", "::1"]

    with pytest.raises(ValidationFailed) as caught:
        validate_callback_url(url, allow_private=False)

    assert caught.value.status == 422
    assert caught.value.code == "callback_url_forbidden"
    assert caught.value.details["reason"] == "private_address"


@pytest.mark.parametrize("url", REFUSED_WHEN_PRIVATE_NOT_ALLOWED)
def test_allow_private_lifts_the_address_rule(
    url: str, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["localhost"] = ["127.0.0.1"]

    assert validate_callback_url(url, allow_private=True) == url


@pytest.mark.parametrize(("url", "reason"), REFUSED_ALWAYS.items())
@pytest.mark.parametrize("allow_private", [False, True])
def test_malformed_urls_are_refused_even_when_private_is_allowed(
    url: str, reason: str, allow_private: bool, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["example.com"] = ["93.184.215.14"]

    with pytest.raises(ValidationFailed) as caught:
        validate_callback_url(url, allow_private=allow_private)

    assert caught.value.code == "callback_url_forbidden"
    assert caught.value.details["reason"] == reason


def test_public_urls_pass(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["hooks.example.com"] = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]

    for url in (
        "https://hooks.example.com/recsys?token=abc",
        "HTTP://hooks.example.com:8443/x",
        "http://8.8.8.8/hook",
        "https://[2606:4700::1111]/hook",
    ):
        assert validate_callback_url(url, allow_private=False) == url


def test_a_name_with_any_internal_address_is_refused_without_echoing_it(
    fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["rebind.example"] = ["93.184.215.14", "10.1.2.3"]

    with pytest.raises(ValidationFailed) as caught:
        validate_callback_url("https://rebind.example/h", allow_private=False)

    assert caught.value.details["reason"] == "private_address"
    assert "10.1.2.3" not in str(caught.value.to_dict())


def test_unresolvable_host_is_a_clear_422(fake_dns: dict[str, list[str]]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_callback_url("https://no-such-host.invalid/hook", allow_private=False)

    assert caught.value.details["reason"] == "unresolvable"
    assert "does not resolve" in caught.value.message


def test_public_addresses_are_not_forbidden() -> None:
    for text in ("8.8.8.8", "93.184.215.14", "2606:4700::1111"):
        assert not is_forbidden_address(ipaddress.ip_address(text))


class _Recorder(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_POST(self) -> None:
        self.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[ThreadingHTTPServer]:
    """A receiver on 127.0.0.1 recording the paths it was POSTed."""
    _Recorder.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_delivery_session_refuses_internal_addresses_at_connect_time(
    local_server: ThreadingHTTPServer,
) -> None:
    port = local_server.server_address[1]
    session = delivery_session(False, 1.0, 1.0, "test")

    for host in ("127.0.0.1", "localhost", "0x7f000001"):
        with pytest.raises(ForbiddenAddress):
            session.post(f"http://{host}:{port}/x", data=b"{}")

    assert _Recorder.hits == []


def test_delivery_session_applies_the_stricter_rule_to_the_pinned_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests-hardened alone lets this public metadata address through.
    session = delivery_session(False, 0.2, 0.2, "test")

    with pytest.raises(ForbiddenAddress):
        session.post("http://168.63.129.16/x", data=b"{}")


def test_delivery_session_with_private_allowed_reaches_loopback_and_ignores_proxies(
    local_server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
    monkeypatch.setenv("NO_PROXY", "")
    session = delivery_session(True, 1.0, 1.0, "test")

    response = session.post(f"http://127.0.0.1:{local_server.server_address[1]}/ok", data=b"{}")

    assert response.status_code == 204
    assert _Recorder.hits == ["/ok"]
    assert isinstance(session, requests.Session)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_numeric_form_of_an_ipv4_address_gets_the_same_decision(value: int) -> None:
    ip = ipaddress.IPv4Address(value)
    octets = ip.packed
    forms = [
        str(ip),
        str(value),
        hex(value),
        ".".join(f"0{o:o}" for o in octets),
        ".".join(hex(o) for o in octets),
        f"{octets[0]}.{int.from_bytes(octets[1:], 'big')}",
    ]
    expected = is_forbidden_address(ip)

    for form in forms:
        url = f"http://{form}:8080/hook"
        if expected:
            with pytest.raises(ValidationFailed):
                validate_callback_url(url, allow_private=False)
        else:
            assert validate_callback_url(url, allow_private=False) == url
