"""The control plane's one error vocabulary: each refusal is a typed error that carries its HTTP
status, its machine-readable code and the CLI's exit status.

The API maps them to a JSON response in one place (`control_plane.api.app`), the CLI to a
message and an exit status in one place (`control_plane.cli.main`). Wings subclass these for
their own refusals (a registry's unknown version is a `NotFound`, a failed gate a `Rejected`), so
nothing between the domain and the edge translates one error into another. This module is at the
bottom: it imports nothing of the project.
"""

from __future__ import annotations


class ControlPlaneError(Exception):
    """A refused call: status code, machine-readable code, message and details."""

    status_code = 400
    code = "bad_request"
    exit_code = 1

    def __init__(self, message: str, **details) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class NotFound(ControlPlaneError):
    status_code = 404
    code = "not_found"


class Conflict(ControlPlaneError):
    """The call is valid but the current state does not allow it."""

    status_code = 409
    code = "conflict"


class Busy(Conflict):
    """Another operation holds the resource; try again when it ends."""

    code = "busy"


class Rejected(ControlPlaneError):
    """A candidate model failed a check or a gate; the champion keeps serving."""

    status_code = 422
    code = "candidate_rejected"
    exit_code = 2
