"""The datasets wing's refusals, each a `control_plane.errors` type (status, code, exit status),
so the CLI and the API map them in their one place."""

from __future__ import annotations

from control_plane.errors import Conflict, ControlPlaneError, NotFound


class SourceError(ControlPlaneError):
    """The source cannot be imported as given: a missing path, a wrong schema, labels without
    images, an image that does not decode far enough to be sized."""

    code = "bad_dataset_source"


class ClassMismatch(Conflict):
    """The source's classes disagree: between its splits, with `--classes`, or with the
    dataset's earlier versions."""

    code = "class_mismatch"


class DiskFull(ControlPlaneError):
    """The datasets folder's disk has no room for the version; nothing was written."""

    status_code = 507
    code = "insufficient_storage"


class DatasetInvalid(ControlPlaneError):
    """The dataset failed validation (a rule of severity `error` found something)."""

    status_code = 422
    code = "dataset_invalid"
    exit_code = 2


class UnknownDataset(NotFound):
    """No such dataset, or no such version of it."""


class DatasetModified(Conflict):
    """A stored version's files no longer match its content hash."""

    code = "dataset_modified"
