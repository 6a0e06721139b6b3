"""Typed gateway errors, mapped once to JSON responses in app.py."""

from __future__ import annotations


class GatewayError(Exception):
    status_code = 500
    code = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str, **extra) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class PayloadTooLarge(GatewayError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status_code = 415
    code = "unsupported_media_type"


class UndecodableImage(GatewayError):
    status_code = 422
    code = "undecodable_image"


class InvalidRequest(GatewayError):
    status_code = 422
    code = "invalid_request"


class Unauthorized(GatewayError):
    """An internal route called without the gateway's internal token (version_stats.py)."""

    status_code = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Overloaded(GatewayError):
    status_code = 429
    code = "overloaded"


class ModelNotFound(GatewayError):
    status_code = 404
    code = "model_not_found"


class TritonUnavailable(GatewayError):
    status_code = 503
    code = "triton_unavailable"

    def __init__(self, message: str, retry_after_s: int = 2, **extra) -> None:
        super().__init__(message, **extra)
        self.headers = {"Retry-After": str(retry_after_s)}


class UpstreamError(GatewayError):
    status_code = 502
    code = "triton_error"


class FrameOutOfOrder(GatewayError):
    status_code = 409
    code = "frame_out_of_order"


class TooManyStreams(GatewayError):
    status_code = 429
    code = "too_many_streams"


class StreamNotFound(GatewayError):
    status_code = 404
    code = "stream_not_found"
