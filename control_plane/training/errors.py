"""The training wing's refusals, each a `control_plane.errors` type (status, code, exit status),
so the CLI and the API map them in their one place. A dataset that fails validation is the
datasets wing's `DatasetInvalid` (exit status 2), raised before anything is trained."""

from __future__ import annotations

from control_plane.errors import Conflict, ControlPlaneError


class ClassSetChanged(Conflict):
    """The dataset's classes are not the registered model's: a version trained on them would
    change what the served model's class ids mean. Train a new model (`--model-name`)."""

    code = "class_set_changed"


class BaseModelError(ControlPlaneError):
    """`--from` names nothing usable: no champion to fine-tune, a missing or refused
    checkpoint, or neither a checkpoint nor an architecture file."""

    code = "bad_base_model"
