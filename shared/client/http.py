"""A small typed HTTP client for the service's API, used by the ``recsys`` CLI and the demo.

It speaks the contract in ``docs/api.md``: base URL plus an ``apikey`` header, JSON
bodies, and the JSON error format, which it turns into one :class:`ApiError`
with a readable one-line message. A refused or timed-out connection becomes
:class:`ConnectionFailed`.

Uploads are streamed from disk (:class:`shared.client.multipart_encoder.MultipartFiles`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from shared.client.multipart_encoder import MultipartFiles

API_PREFIX = "/v1/recommender"
DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds to wait for a connection; a stack that is down answers fast.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for a reply (an upload's reply comes after the server stored it).
READ_TIMEOUT = 300.0
#: Seconds to wait for an upload's reply once sent: the server converts and stores the
#: files first (the API's own limit, RECSYS_WEB_TIMEOUT, defaults to an hour).
UPLOAD_READ_TIMEOUT = 3600.0
#: Above this many source ids, recommendations are asked for with a POST body (URL length).
MAX_GET_SOURCES = 50


class ClientError(Exception):
    """Root of the client's errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiError(ClientError):
    """The API answered with an error (any non-2xx status)."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details: dict[str, Any] = details or {}
        #: Seconds the server asked to wait (``Retry-After`` of a 429 or 503), if any.
        self.retry_after: float | None = None

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The message, the machine code and the status, on one line."""
        text = " ".join(self.message.split())
        extra = _detail_hint(self.details)
        return f"{text}{extra} [{self.code}, HTTP {self.status}]"


class ConnectionFailed(ClientError):
    """The API could not be reached (refused, unresolvable, timed out)."""


def _detail_hint(details: Mapping[str, Any]) -> str:
    """The first row-level problem of an upload error, so a user sees where to look."""
    errors = details.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        where = ":".join(str(first[k]) for k in ("file", "line") if first.get(k) is not None)
        message = first.get("message", "")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f" First problem: {where} {message}{more}".rstrip()
    return ""


def api_base(url: str) -> str:
    """The API root for a server URL, accepting one that already ends in the API prefix."""
    base = url.rstrip("/")
    if base.endswith(API_PREFIX):
        base = base[: -len(API_PREFIX)]
    return base


def _list_param(values: Sequence[str] | None) -> list[str] | None:
    return list(values) if values else None


class RecsysClient:
    """The API of one server, as one tenant (the key's)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = READ_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.base = api_base(url)
        self.api_key = api_key
        self.timeout = timeout
        self.session = session or requests.Session()

    # -- plumbing ---------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Absolute URL of an API path (``/data_batch``) or a root path (``/readyz``)."""
        if path in {"/healthz", "/readyz", "/metrics", "/openapi.json"}:
            return self.base + path
        return self.base + API_PREFIX + path

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send one request; ApiError on a non-2xx answer, ConnectionFailed when unreachable."""
        sent_headers = {"Accept": "application/json"}
        if self.api_key:
            sent_headers["apikey"] = self.api_key
        sent_headers.update(headers or {})
        if params is not None:
            params = {k: v for k, v in params.items() if v is not None}
        try:
            response = self.session.request(
                method,
                self.url(path),
                params=params,
                json=json_body,
                data=data,
                headers=sent_headers,
                timeout=(CONNECT_TIMEOUT, timeout or self.timeout),
                stream=stream,
            )
        except requests.ConnectionError as exc:
            raise ConnectionFailed(f"Cannot connect to {self.base}: {_reason(exc)}") from exc
        except requests.Timeout as exc:
            raise ConnectionFailed(f"{self.base} did not answer in time: {exc}") from exc
        except requests.RequestException as exc:
            raise ConnectionFailed(f"Request to {self.base} failed: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                response.status_code,
                "invalid_response",
                f"The server answered {method} {path} with something that is not JSON.",
            ) from exc

    # -- operations -------------------------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``: raises ApiError (503) while not ready."""
        result: dict[str, Any] = self._json("GET", "/readyz", timeout=10)
        return result

    # -- data -------------------------------------------------------------------------------

    def upload(self, paths: Sequence[Path | str], tags: Sequence[str] = ()) -> list[dict[str, Any]]:
        """``POST /data_batch`` with CSV files streamed from disk; one item per stored batch."""
        body = MultipartFiles([Path(p) for p in paths], tags)
        result: list[dict[str, Any]] = self._json(
            "POST", "/data_batch", data=body, headers={"Content-Type": body.content_type},
            timeout=UPLOAD_READ_TIMEOUT,
        )
        return result

    def upload_json(
        self,
        entities: Sequence[Mapping[str, Any]] = (),
        interactions: Sequence[Mapping[str, Any]] = (),
        tags: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """``POST /data_batch`` with a JSON body (small, frequent updates)."""
        body = {"entities": list(entities), "interactions": list(interactions), "tags": list(tags)}
        result: list[dict[str, Any]] = self._json("POST", "/data_batch", json_body=body)
        return result

    def list_batches(
        self, tags: Sequence[str] | None = None, batch_ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """``GET /data_batch``: batches carrying all ``tags`` (and among ``batch_ids``)."""
        params = {"tags": _list_param(tags), "batch_id": _list_param(batch_ids)}
        result: list[dict[str, Any]] = self._json("GET", "/data_batch", params=params)
        return result

    def delete_batches(
        self, tags: Sequence[str] | None = None, batch_ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """``DELETE /data_batch``: the deleted batches' metadata."""
        params = {"tags": _list_param(tags), "batch_id": _list_param(batch_ids)}
        result: list[dict[str, Any]] = self._json("DELETE", "/data_batch", params=params)
        return result

    def dataset(
        self,
        tags: Sequence[str] | None = None,
        max_age_days: int | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``GET /dataset``: what a training run with these selections would use."""
        params: dict[str, Any] = {
            "data_tags": _list_param(tags),
            "maximum_interaction_age_days": max_age_days,
            "data_filters": json.dumps(filters) if filters is not None else None,
        }
        result: dict[str, Any] = self._json("GET", "/dataset", params=params)
        return result

    # -- training ---------------------------------------------------------------------------

    def train(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /train``: the new run's status object (or a dry run's estimate)."""
        result: dict[str, Any] = self._json("POST", "/train", json_body=dict(body))
        return result

    def status(self, model_id: str) -> dict[str, Any]:
        """``GET /status/<model_id>``: the latest run's status object."""
        result: dict[str, Any] = self._json("GET", f"/status/{_segment(model_id)}")
        return result

    def cancel(self, model_id: str) -> dict[str, Any]:
        """``POST /train/<model_id>/cancel``: stop a running or queued run."""
        result: dict[str, Any] = self._json("POST", f"/train/{_segment(model_id)}/cancel")
        return result

    def models(self) -> Any:
        """``GET /models``: the tenant's models."""
        return self._json("GET", "/models")

    def model(self, model_id: str) -> dict[str, Any]:
        """``GET /models/<model_id>``: serving version, kept versions, last run."""
        result: dict[str, Any] = self._json("GET", f"/models/{_segment(model_id)}")
        return result

    def delete_model(self, model_id: str) -> Any:
        """``DELETE /models/<model_id>``."""
        response = self.request("DELETE", f"/models/{_segment(model_id)}")
        return response.json() if response.content else None

    # -- webhooks ---------------------------------------------------------------------------

    def webhook_secret(self, rotate: bool = False) -> str:
        """The tenant's callback signing secret (``admin`` scope); ``rotate`` replaces it."""
        if rotate:
            result = self._json("POST", "/webhook_secret/rotate")
        else:
            result = self._json("GET", "/webhook_secret")
        return str(result["secret"])

    # -- recommendations --------------------------------------------------------------------

    def _recommend_request(
        self, model_id: str, source_ids: Sequence[str], max_recommendations: int | None,
        exclude_seen: bool, output_format: str, source_metadata: Mapping[str, Any] | None,
        stream: bool = False, options: Mapping[str, Any] | None = None,
    ) -> requests.Response:
        # Shaping options (filters, include_ids, ...) and metadata go as a JSON body.
        if source_metadata is not None or options or len(source_ids) > MAX_GET_SOURCES:
            body: dict[str, Any] = {"model_id": model_id, "exclude_seen": exclude_seen,
                                    "output_format": output_format, **(options or {})}
            if source_ids:
                body["source_id"] = list(source_ids)
            if max_recommendations is not None:
                body["max_recommendations"] = max_recommendations
            if source_metadata is not None:
                body["source_metadata"] = dict(source_metadata)
            return self.request("POST", "/recommended_items", json_body=body, stream=stream)
        params: dict[str, Any] = {
            "model_id": model_id, "source_id": list(source_ids) or None,
            "max_recommendations": max_recommendations, "output_format": output_format,
            "exclude_seen": "true" if exclude_seen else "false"}
        return self.request("GET", "/recommended_items", params=params, stream=stream)

    def recommend(
        self, model_id: str, source_ids: Sequence[str] = (), *,
        max_recommendations: int | None = None, exclude_seen: bool = True,
        source_metadata: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Recommendations as JSON; ``options`` are the API's shaping fields, sent as given."""
        return _json_answer(self._recommend_request(
            model_id, source_ids, max_recommendations, exclude_seen, "json", source_metadata,
            options=options))

    def recommend_csv(
        self, model_id: str, source_ids: Sequence[str] = (), *,
        max_recommendations: int | None = None, exclude_seen: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> str:
        """Recommendations as the CSV text the API returns (header row first)."""
        return b"".join(self.recommend_csv_chunks(
            model_id, source_ids, max_recommendations=max_recommendations,
            exclude_seen=exclude_seen, options=options)).decode("utf-8")

    def recommend_csv_chunks(
        self, model_id: str, source_ids: Sequence[str] = (), *,
        max_recommendations: int | None = None, exclude_seen: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> Iterator[bytes]:
        """The API's CSV as it streams in (no ``source_ids``: every source of the model)."""
        yield from self._chunks(self._recommend_request(
            model_id, source_ids, max_recommendations, exclude_seen, "csv", None, stream=True,
            options=options))

    def similar(
        self, model_id: str, target_ids: Sequence[str], *,
        max_recommendations: int | None = None, output_format: str = "json",
        target_metadata: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Any:
        """Similar items: JSON ``{"model_id", "version", "similar_items"}``, or CSV text."""
        body: dict[str, Any] = {"model_id": model_id, "target_id": list(target_ids),
                                "output_format": output_format, **(options or {})}
        body |= {"max_recommendations": max_recommendations} if max_recommendations else {}
        body |= {"target_metadata": dict(target_metadata)} if target_metadata is not None else {}
        response = self.request("POST", "/similar_items", json_body=body,
                                stream=output_format == "csv")
        csv_text = output_format == "csv"
        return b"".join(self._chunks(response)).decode() if csv_text else _json_answer(response)

    def _chunks(self, response: requests.Response) -> Iterator[bytes]:
        with response:
            try:
                yield from response.iter_content(chunk_size=1 << 16)
            except requests.RequestException as exc:
                raise ConnectionFailed(f"The answer from {self.base} broke off: {exc}") from exc


def _json_answer(response: requests.Response) -> dict[str, Any]:
    try:
        result: dict[str, Any] = response.json()
    except ValueError as exc:
        raise ApiError(response.status_code, "invalid_response",
                       "The answer was not JSON.") from exc
    return result


def _segment(value: str) -> str:
    return quote(value, safe="")


def _reason(exc: requests.ConnectionError) -> str:
    text = str(exc)
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def error_from_response(response: requests.Response) -> ApiError:
    """The contract's error body as an ApiError; a non-JSON body still gives a readable one."""
    error = _error_body(response)
    try:
        error.retry_after = float(response.headers.get("Retry-After", ""))
    except ValueError:
        error.retry_after = None
    return error


def _error_body(response: requests.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        details = err.get("details") if isinstance(err.get("details"), dict) else {}
        return ApiError(
            response.status_code,
            str(err.get("code") or "error"),
            str(err.get("message") or response.reason or "request failed"),
            details or {},
        )
    snippet = " ".join(response.text.split())[:200] if response.text else ""
    message = f"{response.reason or 'Error'}" + (f": {snippet}" if snippet else "")
    return ApiError(response.status_code, f"http_{response.status_code}", message)
