"""The address rule for callback URLs: checked at submit time and again at every attempt.

:func:`validate_callback_url` runs when ``POST /train`` accepts a
``callback_url``: http(s) only, no credentials, a length cap, and a host
whose every address (literal, numeric IPv4 forms such as ``0x7f000001``
included, or resolved through DNS) is public. :func:`delivery_session` builds
the HTTP session every attempt uses: ``requests-hardened`` resolves the host
once and connects to the checked address only (so a DNS answer that changed
since submit time is caught), never follows redirects and ignores proxy
settings from the environment; on top of its filter the same
:func:`is_forbidden_address` rule is applied to the address it pinned, so
submit time and delivery time agree (the library alone lets, for example,
Azure's metadata address through).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import requests
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import EXTRA_BLOCKED_NET_RANGES, InvalidIPAddress
from requests_hardened.ip_filter_adapter import IPFilterAdapter

from shared.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Longest callback URL accepted (browsers and proxies commonly stop near here).
MAX_URL_LENGTH = 2048

#: Cloud metadata services that are not covered by the private and link-local ranges.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure IMDS, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "168.63.129.16",  # Azure wire server (a public address)
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)

_NUMERIC_HOST = re.compile(r"^[0-9a-fx.]+$")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


def _refuse(message: str, reason: str, **details: Any) -> ValidationFailed:
    return ValidationFailed(
        message,
        code="callback_url_forbidden",
        details={"field": "callback_url", "reason": reason, **details},
    )


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = [ip.ipv4_mapped, ip.sixtofour]
    if ip.teredo is not None:
        found.append(ip.teredo[1])
    return [addr for addr in found if addr is not None]


def is_forbidden_address(ip: IPAddress) -> bool:
    """True for loopback, private, link-local, CGNAT, multicast, reserved or metadata addresses."""
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        candidates.extend(_embedded_ipv4(ip))
        if ip.scope_id:
            candidates.append(ipaddress.IPv6Address(str(ip).split("%", 1)[0]))
    for addr in candidates:
        if (
            addr in METADATA_ADDRESSES
            or not addr.is_global
            or addr.is_private
            or addr.is_loopback
            or addr.is_link_local
            or addr.is_multicast
            or addr.is_reserved
            or addr.is_unspecified
            or (isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local)
            or any(addr in net for net in EXTRA_BLOCKED_NET_RANGES)
        ):
            return True
    return False


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally (IPv6, dotted or numeric IPv4 forms), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host.lower()):
        # inet_aton takes what resolvers take: 0x7f000001, 2130706433, 0177.1, 127.1.
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (raises socket.gaierror when it does not)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def _host_and_port(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL without credentials; 422 for anything else."""
    if not isinstance(url, str) or not url:
        raise _refuse("The callback_url must be a non-empty string.", "malformed")
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(
            f"The callback_url is longer than {MAX_URL_LENGTH} characters.",
            "too_long",
            max_length=MAX_URL_LENGTH,
        )
    if _FORBIDDEN_CHARS.search(url):
        raise _refuse(
            "The callback_url contains spaces, control characters or backslashes.", "malformed"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse(f"The callback_url is not a valid URL: {exc}.", "malformed") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse(
            "The callback_url must be an http:// or https:// URL.",
            "scheme",
            scheme=scheme,
        )
    if "@" in parts.netloc:
        raise _refuse(
            "The callback_url must not carry credentials (user:password@); "
            "verify callbacks with the webhook signature instead.",
            "credentials",
        )
    host = parts.hostname or ""
    if not host:
        raise _refuse("The callback_url has no host.", "no_host")
    if port == 0:
        raise _refuse("The callback_url has an invalid port.", "malformed")
    return host, port or (443 if scheme == "https" else 80)


def validate_callback_url(url: str, allow_private: bool) -> str:
    """Return ``url`` when a callback may be sent there, else raise 422 callback_url_forbidden."""
    host, port = _host_and_port(url)
    literal = literal_address(host)
    if literal is not None:
        if not allow_private and is_forbidden_address(literal):
            raise _refuse(
                f"The callback_url points at {literal}, a loopback, private, link-local or "
                "otherwise internal address; callbacks go to public addresses only.",
                "private_address",
                address=str(literal),
            )
        return url
    try:
        addresses = _resolve(host.encode("idna").decode("ascii"), port)
    except (OSError, UnicodeError) as exc:
        raise _refuse(
            f"The callback_url's host '{host}' does not resolve; check the name, "
            "or use an address that resolves from this service.",
            "unresolvable",
            host=host,
        ) from exc
    if not allow_private and any(is_forbidden_address(addr) for addr in addresses):
        # The resolved address is not echoed: it would let a caller map internal DNS names.
        raise _refuse(
            f"The callback_url's host '{host}' resolves to a loopback, private, link-local or "
            "otherwise internal address; callbacks go to public addresses only.",
            "private_address",
            host=host,
        )
    return url


class _StrictAdapter(IPFilterAdapter):  # type: ignore[misc]
    """requests-hardened's pinning adapter, plus this module's rule on the pinned address."""

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        pinned = ipaddress.ip_address(str(host_params["host"]).strip("[]"))
        if is_forbidden_address(pinned):
            raise InvalidIPAddress(pinned)
        return host_params, pool_kwargs


def delivery_session(
    allow_private: bool, connect_timeout: float, read_timeout: float, user_agent: str
) -> requests.Session:
    """A session that connects only to checked addresses and never follows redirects."""
    session: requests.Session = HTTPSession(
        Config(
            ip_filter_enable=False,
            ip_filter_allow_loopback_ips=False,
            never_redirect=True,
            default_timeout=(connect_timeout, read_timeout),
            user_agent_override=user_agent,
        )
    )
    if not allow_private:
        session.mount("http://", _StrictAdapter(is_https_proto=False, allow_loopback=False))
        session.mount("https://", _StrictAdapter(is_https_proto=True, allow_loopback=False))
    # Proxies and .netrc from the environment would bypass the pinned address.
    session.trust_env = False
    return session


#: What an attempt raises when the address rule stops it (re-exported for the worker).
ForbiddenAddress = InvalidIPAddress
