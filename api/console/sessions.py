"""Server-side console sessions in Redis; the cookie holds only a random session id.

Hand-written rather than Flask-Session because that library replaces the
session interface of the whole app: every API request carrying a stray cookie
would then read Redis while the request context is pushed, where a Redis error
becomes a bare 500 instead of the contract's 503. This interface acts only under
``/console``, decides ``Secure`` per request (set when served over HTTPS), stores
JSON (never a pickle), refreshes an idle timeout on every request and enforces
an absolute lifetime, and rotates the id at sign-in (no session fixation).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any, cast

import orjson
import redis
from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from api.context import services
from shared.registry import global_key

#: Cookie name of the console session (the API itself never sets a cookie).
COOKIE_NAME = "recsys_console"
#: Path the cookie (and this interface) is limited to.
CONSOLE_PATH = "/console"
#: Seconds without a request after which a session ends (``CONSOLE_SESSION_IDLE_SECONDS``).
IDLE_SECONDS = 2 * 3600
#: Seconds after sign-in after which a session ends however active (``..._MAX_SECONDS``).
MAX_SECONDS = 12 * 3600
log = logging.getLogger(__name__)
_SID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def session_key(sid: str) -> str:
    """The Redis key holding one session's JSON."""
    return global_key("console_session", sid)


class ConsoleSession(CallbackDict[str, Any], SessionMixin):
    """A dict remembered in Redis under ``sid`` (None until first saved)."""

    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None,
                 unavailable: bool = False) -> None:
        def on_update(_self: Any) -> None:
            self.modified = True

        super().__init__(initial or {}, on_update)
        self.sid = sid
        self.modified = False
        #: Redis could not be read: the console answers 503 (see ``views``).
        self.unavailable = unavailable
        #: Set at sign-in: the next save moves the data to a fresh id.
        self.rotate = False


def _limits(app: Flask) -> tuple[int, int]:
    return (int(app.config.get("CONSOLE_SESSION_IDLE_SECONDS", IDLE_SECONDS)),
            int(app.config.get("CONSOLE_SESSION_MAX_SECONDS", MAX_SECONDS)))


def _is_console(request: Request) -> bool:
    return request.path == CONSOLE_PATH or request.path.startswith(CONSOLE_PATH + "/")


class RedisConsoleSessions(SessionInterface):
    """Sessions for ``/console`` only; every other path gets Flask's null session."""

    def open_session(self, app: Flask, request: Request) -> ConsoleSession | None:
        """The stored session of the request's cookie, or a new empty one."""
        if not _is_console(request):
            return None
        sid = request.cookies.get(COOKIE_NAME, "")
        if not _SID_RE.match(sid):
            return ConsoleSession()
        try:
            raw = cast(str | None, services().redis.get(session_key(sid)))
        except redis.RedisError:
            return ConsoleSession(unavailable=True)
        if not raw:
            return ConsoleSession()
        data = orjson.loads(raw)
        _idle, longest = _limits(app)
        if not isinstance(data, dict) or time.time() - float(data.get("_created", 0)) > longest:
            return ConsoleSession()
        return ConsoleSession(data, sid)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Store (or drop) the session and set (or clear) its cookie."""
        if not isinstance(session, ConsoleSession) or session.unavailable:
            return
        from flask import request

        try:
            self._store(app, session, response, request.is_secure)
        except redis.RedisError as exc:  # the page was rendered; the next request answers 503
            log.warning("could not store a console session: %s", exc)

    def _store(self, app: Flask, session: ConsoleSession, response: Response,
               secure: bool) -> None:
        r = services().redis
        idle, _longest = _limits(app)
        if session.sid and (session.rotate or not session):
            r.delete(session_key(session.sid))
            if not session:
                response.delete_cookie(COOKIE_NAME, path=CONSOLE_PATH)
                return
            session.sid = None
        if not session:
            return
        if session.sid is None:
            session.sid = secrets.token_urlsafe(32)
            session.setdefault("_created", time.time())
        r.set(session_key(session.sid), orjson.dumps(dict(session)), ex=idle)
        response.set_cookie(
            COOKIE_NAME, session.sid, path=CONSOLE_PATH, httponly=True, samesite="Strict",
            secure=secure,
        )
        response.vary.add("Cookie")
