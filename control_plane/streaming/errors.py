"""The streaming wing's refusals: a source that does not open, decode or keep delivering, and a
gateway that is not there or refuses the stream. Each is a `control_plane.errors` type, so the
CLI maps it to a message and an exit status in its one place."""

from __future__ import annotations

from control_plane.errors import Conflict, ControlPlaneError


class SourceUnavailable(ControlPlaneError):
    """The source does not open (a missing file, an unreachable URL, no such device) or was
    lost and did not come back within the reconnect attempts."""

    status_code = 422
    code = "source_unavailable"
    exit_code = 3


class UndecodableSource(ControlPlaneError):
    """The source opens but PyAV cannot decode it: not a video container, no video stream, a
    codec the FFmpeg in the wheel lacks, or packets that never decode into a frame."""

    status_code = 422
    code = "undecodable_source"
    exit_code = 3


class SourceStalled(SourceUnavailable):
    """No data from the source for the stall timeout, still after the reconnect attempts."""

    code = "source_stalled"


class GatewayUnavailable(ControlPlaneError):
    """The gateway does not answer, or is not ready to detect."""

    status_code = 503
    code = "gateway_unavailable"
    exit_code = 4


class GatewayRefused(ControlPlaneError):
    """The gateway refused the stream's frames for a reason every later frame would share (a
    bad stream id, another frame rate than the stream's): sending more would not help."""

    status_code = 422
    code = "gateway_refused"
    exit_code = 4


class StreamInUse(Conflict):
    """The gateway's stream already has newer frames than this run's first one (an earlier run
    with the same id); `--reset` starts it again."""

    code = "stream_in_use"
    exit_code = 4
