"""Data batches: upload, list, delete, and the dataset summary."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import marshmallow as ma
import orjson
from flask import request
from flask.views import MethodView

from api.auth import current_tenant, require
from api.body import body_stream
from api.bounded import bounded
from api.context import services
from api.parsing import Blueprint, load_json_body
from shared.config import Settings
from shared.data.batches import BatchMeta, forget_batches, list_batches, validate_tags
from shared.data.selection import MAX_INTERACTION_AGE_DAYS, DataSpec
from shared.data.summary import summarise_data
from shared.errors import (
    BadRequest,
    DependencyUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.ingest.csv_reader import finish, prepare_csv
from shared.ingest.multipart_parser import FILE_FIELDS, Received, receive_multipart
from shared.ingest.pipe import StreamingConversion
from shared.ingest.store import Prepared, delete_files, prepare_json, row_errors, store
from shared.ingest.store import workspace as upload_workspace
from shared.quotas import check_new_batches
from shared.registry import redis_guard

log = logging.getLogger(__name__)

blp = Blueprint(
    "data", __name__, description="Data batches: upload, list, delete, and the dataset summary."
)

#: Bytes a multipart body may carry beyond its files (part headers, boundaries, tags).
MULTIPART_OVERHEAD = 1 << 20


class BatchSchema(ma.Schema):
    """One stored batch."""

    batch_id = ma.fields.String(required=True)
    timestamp = ma.fields.String(
        required=True, metadata={"description": "ISO-8601 UTC upload time"}
    )
    tags = ma.fields.List(ma.fields.String(), required=True)
    kind = ma.fields.String(required=True, validate=ma.validate.OneOf(["entities", "interactions"]))
    entity_count = ma.fields.Integer(required=True)
    interaction_count = ma.fields.Integer(required=True)
    bytes = ma.fields.Integer(required=True, metadata={"description": "stored (Parquet) bytes"})


class BatchQuerySchema(ma.Schema):
    """Which batches to list or delete; list values may repeat or be comma-separated."""

    class Meta:
        unknown = ma.RAISE

    batch_id = ma.fields.List(ma.fields.String())
    tags = ma.fields.List(ma.fields.String())


class DatasetQuerySchema(ma.Schema):
    """The data selection of a training run, as query parameters."""

    class Meta:
        unknown = ma.RAISE

    data_tags = ma.fields.List(ma.fields.String())
    maximum_interaction_age_days = ma.fields.Integer(
        validate=ma.validate.Range(1, MAX_INTERACTION_AGE_DAYS))
    data_filters = ma.fields.String(metadata={"description": "URL-encoded JSON object"})
    source_type = ma.fields.String()
    target_type = ma.fields.String()


class DatasetSchema(ma.Schema):
    """Totals of the data a training run with this selection would use."""

    batch_count = ma.fields.Integer()
    bytes = ma.fields.Integer()
    batch_ids = ma.fields.List(ma.fields.String())
    entities = ma.fields.Dict()
    interactions = ma.fields.Dict()
    sources = ma.fields.Integer()
    targets = ma.fields.Integer()
    implied_entities = ma.fields.Dict()
    timestamps = ma.fields.Dict()


def _split(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated values mean the same; blanks dropped."""
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["files"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "entities": {"type": "array", "items": {"type": "object"}},
                        "interactions": {"type": "array", "items": {"type": "object"}},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                }
            },
        },
    }
}


def _form_tags(received: Received, settings: Settings) -> tuple[str, ...]:
    """The upload's tags, once the form is known to have files and no unknown fields."""
    unknown = sorted(set(received.fields) - {"tags"})
    if unknown:
        raise ValidationFailed(
            f"Unknown form field(s) {', '.join(unknown)}; send 'files' parts and 'tags'.",
            code="invalid_body",
            details={"fields": {name: ["Unknown field."] for name in unknown}},
        )
    tags = validate_tags(_split(received.fields.getlist("tags")), settings.max_tags)
    if not received.files:
        raise ValidationFailed(
            "No files in the upload: send one or more CSV files as 'files' parts.",
            code="no_files",
            details={"file_fields": list(FILE_FIELDS)},
        )
    return tags


def _finish_files(received: Received, workdir: Path, settings: Settings
                  ) -> tuple[list[Prepared], list[dict[str, Any]]]:
    """Each received file as a Parquet batch, or its row errors (waits for the conversions)."""
    prepared: list[Prepared] = []
    errors: list[dict[str, Any]] = []
    for index, upload in enumerate(received.files):
        if isinstance(upload.tee, StreamingConversion):
            result = finish(upload.path, upload.filename, upload.tee.out, settings,
                            upload.tee.wait())
        else:  # CSV text sent as a plain form field
            result = prepare_csv(upload.path, upload.filename,
                                 workdir / f"field-{index}.parquet", settings)
        if isinstance(result, Prepared):
            prepared.append(result)
        else:
            errors.extend(result)
    return prepared, errors


class _Conversions:
    """Starts a streaming conversion for each file part as it arrives (a ``TeeFactory``)."""

    def __init__(self, workdir: Path, settings: Settings) -> None:
        self.workdir = workdir
        self.settings = settings
        self.started: list[StreamingConversion] = []

    def __call__(self, index: int, filename: str) -> StreamingConversion:
        """The conversion for the file part at ``index``."""
        # Earlier files are complete by now; let at most one lag behind, so memory stays
        # bounded however many files a request carries.
        for earlier in self.started[:-1]:
            earlier.join()
        conversion = StreamingConversion(
            filename, self.workdir / f"{index}.parquet", self.settings)
        self.started.append(conversion)
        return conversion

    def abort(self) -> None:
        """Stop every conversion still running (a no-op for those that ended)."""
        for conversion in self.started:
            conversion.abort()


def upload_multipart(tenant: str) -> list[BatchMeta]:
    svc = services()
    settings = svc.settings
    request.max_content_length = (
        settings.max_files_per_request * (settings.max_file_bytes + MULTIPART_OVERHEAD)
        + MULTIPART_OVERHEAD
    )
    started = time.perf_counter()
    with upload_workspace(settings) as workdir:
        conversions = _Conversions(workdir, settings)
        try:
            with body_stream(request) as stream:
                received = receive_multipart(
                    stream, request.content_type or "", request.content_length, workdir,
                    settings, conversions,
                )
            received_at = time.perf_counter()
            tags = _form_tags(received, settings)
            prepared, errors = _finish_files(received, workdir, settings)
        finally:
            conversions.abort()
        if errors:
            raise row_errors(errors)
        converted_at = time.perf_counter()
        metas = store(svc.storage, svc.redis, tenant, prepared, tags, datetime.now(UTC),
                      settings)
        log.info(
            "upload of %d file(s), %d rows, %d bytes: received %.2f s, converted %.2f s more, "
            "stored %.2f s", len(prepared), sum(p.rows for p in prepared),
            sum(f.size for f in received.files), received_at - started,
            converted_at - received_at, time.perf_counter() - converted_at,
        )
        return metas


def _upload_json(tenant: str) -> list[BatchMeta]:
    svc = services()
    body = load_json_body(request)
    raw_tags = body.get("tags") if isinstance(body, dict) else None
    if isinstance(raw_tags, str):
        raw_tags = _split([raw_tags])
    tags = validate_tags(raw_tags, svc.settings.max_tags)
    with upload_workspace(svc.settings) as workdir:
        prepared, _ = prepare_json(body, workdir, svc.settings)
        return store(svc.storage, svc.redis, tenant, prepared, tags, datetime.now(UTC),
                     svc.settings)


@blp.route("/data_batch")
class DataBatches(MethodView):
    """Upload, list and delete batches."""

    @require("data:write")
    @blp.doc(**_UPLOAD_DOC)
    @blp.response(201, BatchSchema(many=True))
    @blp.alt_response(413, description="A file over the byte or row limit, or too many files.")
    @blp.alt_response(415, description="Neither multipart/form-data nor application/json.")
    @blp.alt_response(422, description="Bad header or rows; details.errors gives file and line.")
    def post(self) -> list[dict[str, Any]]:
        """Upload CSV files (multipart) or a JSON body; one batch per file or non-empty list."""
        tenant = current_tenant()
        mimetype = request.mimetype
        if mimetype != "multipart/form-data" and not request.is_json:
            raise UnsupportedMediaType(
                "Upload CSV files as multipart/form-data, or rows as application/json.",
                details={"content_type": request.content_type},
            )
        svc = services()
        # Full already: refuse before reading the body (the transaction that records the
        # batches checks again, exactly).
        with redis_guard("checking the batch quotas"):
            check_new_batches(svc.redis, svc.settings, tenant, 1, 0)
        try:
            if mimetype == "multipart/form-data":
                metas = upload_multipart(tenant)
            else:
                metas = _upload_json(tenant)
        except OSError as exc:  # the local work directory (disk full, permissions)
            raise DependencyUnavailable(
                f"The upload could not be written to the work directory: {exc}; "
                "nothing was stored.",
                details={"dependency": "disk"},
            ) from exc
        return [m.as_dict() for m in metas]

    @require("data:read")
    @blp.arguments(BatchQuerySchema, location="query", as_kwargs=True, unknown=ma.RAISE)
    @blp.response(200, BatchSchema(many=True))
    def get(self, batch_id: list[str] | None = None, tags: list[str] | None = None
            ) -> list[dict[str, Any]]:
        """List batches (all the given tags must match; batch_id narrows to those ids)."""
        metas = list_batches(services().redis, current_tenant(), _split(batch_id), _split(tags))
        return [m.as_dict() for m in metas]

    @require("data:write")
    @blp.arguments(BatchQuerySchema, location="query", as_kwargs=True, unknown=ma.RAISE)
    @blp.response(200, BatchSchema(many=True))
    @blp.alt_response(400, description="Neither batch_id nor tags was given.")
    def delete(self, batch_id: list[str] | None = None, tags: list[str] | None = None
               ) -> list[dict[str, Any]]:
        """Delete the matching batches and their files; returns what was deleted."""
        ids, wanted_tags = _split(batch_id), _split(tags)
        if not ids and not wanted_tags:
            raise BadRequest(
                "Say which batches to delete with batch_id and/or tags.",
                code="selection_required",
            )
        svc = services()
        tenant = current_tenant()
        metas = list_batches(svc.redis, tenant, ids, wanted_tags)
        forget_batches(svc.redis, tenant, metas)
        delete_files(svc.storage, tenant, metas)
        return [m.as_dict() for m in metas]


def _dataset(body: dict[str, Any]) -> dict[str, Any]:
    svc = services()
    spec = DataSpec.from_request(body)
    tenant, now = current_tenant(), datetime.now(UTC)
    return bounded(lambda: summarise_data(svc.storage, svc.redis, tenant, spec, now),
                   "data summary")


@blp.route("/dataset")
class DatasetSummary(MethodView):
    """What a training run with a given selection would use."""

    @require("data:read")
    @blp.arguments(DatasetQuerySchema, location="query", as_kwargs=True, unknown=ma.RAISE)
    @blp.response(200, DatasetSchema)
    def get(self, **query: Any) -> dict[str, Any]:
        """Totals of what a training run with this selection would use."""
        body: dict[str, Any] = dict(query)
        if "data_tags" in body:
            body["data_tags"] = _split(body["data_tags"])
        if "data_filters" in body:
            try:
                body["data_filters"] = orjson.loads(body["data_filters"])
            except orjson.JSONDecodeError as exc:
                raise ValidationFailed(
                    f"data_filters is not valid JSON: {exc}",
                    code="invalid_data_selection",
                    details={"fields": {"data_filters": ["Not valid JSON."]}},
                ) from exc
        return _dataset(body)

    @require("data:read")
    @blp.doc(requestBody={"content": {"application/json": {"schema": {"type": "object"}}}})
    @blp.response(200, DatasetSchema)
    def post(self) -> dict[str, Any]:
        """The same, with the selection as a JSON body (a /train body works as is)."""
        body = load_json_body(request)
        if not isinstance(body, dict):
            raise ValidationFailed("The body is a JSON object.", code="invalid_body")
        return _dataset(body)
