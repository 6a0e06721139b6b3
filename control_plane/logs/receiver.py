"""The embedded trace collector: an OTLP/HTTP receiver that writes spans as JSON lines.

`visionguard up` points the gateway's OTLP exporter and Triton's `opentelemetry` trace mode at
`POST /v1/traces` here, so one file (`Settings.traces_file`, default
`<runtime_dir>/traces/spans.jsonl`) holds every span of a request, the gateway's and Triton's,
in the schema of `tracker_service.telemetry.span_record`.

Bodies: `application/x-protobuf` (ExportTraceServiceRequest; what the Python SDK sends) or
`application/json` (OTLP/JSON, ids in hex; what Triton 2.48 sends), optionally gzip-encoded.

The route takes no token: OTLP exporters, Triton's in particular, cannot easily send one. Keep
the control plane bound to localhost or an internal port (the default host is 127.0.0.1).
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections.abc import Callable, Iterator

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from litestar import Request, Response, Router, post
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

from control_plane.errors import ControlPlaneError
from control_plane.settings import Settings
from tracker_service.telemetry import SpanFile, rfc3339, span_record


class BadTraces(ControlPlaneError):
    code = "invalid_traces"


_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR", "STATUS_CODE_UNSET": "UNSET",
           "STATUS_CODE_OK": "OK", "STATUS_CODE_ERROR": "ERROR"}


def _hex_id(value: str) -> str:  # OTLP/JSON: ids are hex strings
    return (value or "").lower()


def _b64_id(value: str) -> str:  # protobuf via MessageToDict: bytes come out base64
    return base64.b64decode(value).hex() if value else ""


def any_value(v: dict):
    """An OTLP AnyValue (JSON form) as a plain Python value."""
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [any_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return attributes(v["kvlistValue"].get("values", []))
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def attributes(kvs: list[dict]) -> dict:
    return {kv["key"]: any_value(kv.get("value", {})) for kv in kvs}


def records(doc: dict, decode_id: Callable[[str], str]) -> Iterator[dict]:
    """Span records from an ExportTraceServiceRequest in its JSON form."""

    for rs in doc.get("resourceSpans", []):
        resource = attributes(rs.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", ""))
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                start, end = int(s.get("startTimeUnixNano", 0)), int(s.get("endTimeUnixNano", 0))
                trace_id, span_id = decode_id(s.get("traceId", "")), decode_id(s.get("spanId", ""))
                if len(trace_id) != 32 or len(span_id) != 16:
                    raise BadTraces(f"span {s.get('name')!r}: bad trace or span id")
                yield span_record(
                    name=s.get("name", ""), service=service, trace_id=trace_id, span_id=span_id,
                    parent_span_id=decode_id(s.get("parentSpanId", "")), start_ns=start,
                    end_ns=end, status=_STATUS.get(s.get("status", {}).get("code", 0), "UNSET"),
                    attributes=attributes(s.get("attributes", [])),
                    events=[{"name": e.get("name", ""),
                             "time": rfc3339(int(e.get("timeUnixNano", 0)) / 1e9)}
                            for e in s.get("events", [])])


def decode(body: bytes, content_type: str, content_encoding: str = "") -> tuple[list[dict], bool]:
    """(span records, whether the body was JSON); BadTraces on anything unreadable."""
    try:
        if content_encoding == "gzip":
            body = gzip.decompress(body)
        elif content_encoding == "deflate":
            body = zlib.decompress(body)
    except (OSError, zlib.error) as exc:
        raise BadTraces(f"cannot decompress the body ({content_encoding}): {exc}") from None
    try:
        if content_type.startswith("application/json"):
            return list(records(json.loads(body), _hex_id)), True
        if content_type.startswith("application/x-protobuf"):
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            return list(records(MessageToDict(request), _b64_id)), False
    except (ValueError, TypeError, KeyError, AttributeError, DecodeError) as exc:
        raise BadTraces(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    raise BadTraces(f"unsupported content type {content_type!r}: application/x-protobuf or "
                    "application/json")


def router(settings: Settings) -> Router:
    spans_file = SpanFile(settings.traces_file, settings.traces_max_bytes)

    @post("/v1/traces", status_code=200, summary="OTLP/HTTP trace receiver (no token)",
          description="Writes the spans as JSON lines to the control plane's traces file.")
    async def receive_traces(request: Request) -> Response:
        body = await request.body()
        spans, as_json = decode(body, request.headers.get("content-type", ""),
                                request.headers.get("content-encoding", ""))
        spans_file.write(spans)
        counter = request.app.state.metrics.spans_received
        for record in spans:
            counter.labels(record["service"] or "unknown").inc()
        if as_json:
            return Response(b"{}", media_type="application/json")
        return Response(ExportTraceServiceResponse().SerializeToString(),
                        media_type="application/x-protobuf")

    return Router(path="/", route_handlers=[receive_traces], tags=["traces"])
