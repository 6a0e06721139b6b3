"""Ultralytics checkpoints (.pt) and ONNX files read without running code from them.

A `.pt` is a pickle, and unpickling runs whatever callables it names: a checkpoint registered
with the API ran a shell command in the control plane before being answered "not an
Ultralytics checkpoint" (Ultralytics' loader falls back to full unpickling). Here a checkpoint
is read only by torch's weights-only unpickler, against an allow-list of the classes an
Ultralytics detection checkpoint holds, and never loaded another way: anything else is refused
with the global it names.

An allow-list alone is not enough. The weights-only unpickler calls an allow-listed class with
arguments of the pickle's choosing (the REDUCE opcode), and `DetectionModel(cfg)` rebuilds the
network from `cfg`, passing its `activation` string to `eval()`: a pickle that asks for
`DetectionModel({... "activation": "__import__('os').system(...)"})` ran its command through a
plain `safe_globals([DetectionModel, ...])` load (verified with torch 2.14, ultralytics 8.4).
So the model classes are allow-listed as stand-ins that create the instance without calling
`__init__` (how a saved module is rebuilt anyway: `__new__`, then its saved state), and the
saved architecture, which Ultralytics rebuilds with the same `eval()` when training from a
checkpoint, must name only layer classes and a literal activation.

Exported ONNX files are checked before Triton loads them (`check_onnx`): standard operators
only, external data inside the model's folder.
"""

from __future__ import annotations

import ast
import importlib
import pickle
import pickletools
import pkgutil
import re
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ultralytics import YOLO

MAX_CHECKPOINT_BYTES = 2 * 1024**3
MAX_ONNX_BYTES = 2 * 1024**3
STANDARD_ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

HOW_TO_PROCEED = (
    "Only Ultralytics detection checkpoints (YOLO(...).save() or a training run's weights/"
    "best.pt) are accepted. If this file is yours, load it in a trusted, isolated environment "
    "and save it again with YOLO(...).save(); otherwise do not use it.")


class CheckpointError(ValueError):
    """A model file that cannot be used: missing, too large, unreadable or of the wrong kind."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint that asks the unpickler for something a detection checkpoint never holds."""


# --- the allow-list ----------------------------------------------------------------------------

def _classes_in(package: str, base: type) -> list[type]:
    """Subclasses of `base` defined in `package` and its submodules (not imported into them)."""
    pkg = importlib.import_module(package)
    names = [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
    found = []
    for name in names:
        module = importlib.import_module(name)
        found += [obj for obj in vars(module).values() if isinstance(obj, type)
                  and issubclass(obj, base) and obj.__module__ == name]
    return found


def _model_classes() -> list[type]:
    """What a detection checkpoint pickles as modules: the DetectionModel, Ultralytics' layers,
    and torch's layers (read from the installed packages, so a new Ultralytics block is covered
    without editing a list). Detection only: a segmentation or pose model is refused."""
    import torch.nn
    from ultralytics.nn.tasks import DetectionModel

    return [DetectionModel, *_classes_in("ultralytics.nn.modules", torch.nn.Module),
            *_classes_in("torch.nn.modules", torch.nn.Module)]


def _data_types() -> list[tuple[Any, str]]:
    """Plain values older Ultralytics versions wrote into checkpoints (metrics as numpy scalars,
    arguments as IterableSimpleNamespace, paths), under every name they were pickled as.
    Their constructors only build values, so they may be called."""
    import pathlib

    import numpy as np
    from ultralytics.utils import IterableSimpleNamespace

    scalar = np.float64(0).__reduce__()[0]
    dtypes = [np.bool_, np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
              np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
    return [
        (np.dtype, "numpy.dtype"),
        *[(type(np.dtype(t)), f"numpy.dtypes.{type(np.dtype(t)).__name__}") for t in dtypes],
        (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
        (IterableSimpleNamespace, "ultralytics.utils.IterableSimpleNamespace"),
        (IterableSimpleNamespace, "ultralytics.yolo.utils.IterableSimpleNamespace"),
        *[(pathlib.PosixPath, f"{m}.{c}") for m in ("pathlib", "pathlib._local")
          for c in ("PosixPath", "WindowsPath")],
    ]


def _construct_only(cls: type, name: str) -> type:
    """A stand-in for `cls` that the unpickler can instantiate but never initialise.

    NEWOBJ calls `stand_in.__new__(stand_in)` and REDUCE calls `stand_in(*args)`; both return a
    bare `cls` instance (not a stand-in, so `__init__` is skipped) for BUILD to fill with its
    saved state. Arguments would go to `__init__`: a saved module never has any.
    """

    def __new__(stand_in, *args, **kwargs):
        if args or kwargs:
            raise pickle.UnpicklingError(
                f"Unsupported call: {name} with arguments (a saved module is rebuilt from its "
                "state, never by calling its class)")
        return cls.__new__(cls)

    return type(cls.__name__, (), {"__new__": __new__, "__qualname__": cls.__qualname__,
                                   "__module__": cls.__module__})


_allow_list: list[tuple[Any, str]] | None = None
_allowed_names: frozenset[str] = frozenset()
_load_lock = threading.Lock()


def _allow_list_entries() -> list[tuple[Any, str]]:
    """(object, pickled name) pairs for `torch.serialization.safe_globals`, built once."""
    global _allow_list, _allowed_names
    if _allow_list is None:
        entries: list[tuple[Any, str]] = []
        for cls in _model_classes():
            name = f"{cls.__module__}.{cls.__qualname__}"
            entries.append((_construct_only(cls, name), name))
            # BUILD checks the instance's type among the allowed objects: the real class goes
            # in under a name with a newline, which no GLOBAL opcode can spell (it reads lines).
            entries.append((cls, f"\n{name}"))
        entries += _data_types()
        _allowed_names = frozenset(n for _, n in entries if not n.startswith("\n"))
        _allow_list = entries
    return _allow_list


# --- loading a checkpoint ----------------------------------------------------------------------

def _checked_file(path: str | Path, max_bytes: int, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} {path} is empty")
    if size > max_bytes:
        raise CheckpointError(f"{what} {path} is {size} bytes, over the {max_bytes}-byte limit")
    return path


_REFUSALS = [  # torch's weights-only unpickler's (and our stand-ins') words -> what the file did
    (re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global"), "asks for {}"),
    (re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"), "asks for {}"),
    (re.compile(r"Trying to call reduce for unrecognized function (.+?)(?: which belongs|$)",
                re.M), "calls {}"),
    (re.compile(r"Unsupported call: (\S+) with arguments"),
     "calls {} with arguments, which would run its constructor"),
    (re.compile(r"(Can only (?:create new object|build) .+?, but got .+?)$", re.M),
     "builds an object the unpickler refuses ({})"),
]


def _pickle_globals(data: bytes) -> list[str]:
    """The globals a pickle imports, read with pickletools (nothing is unpickled). Stops
    quietly at the end of the first pickle or at damage."""
    found, pushed, memo = [], [], {}
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                found.append(f"{pushed[-2]}.{pushed[-1]}")
            elif op.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif "UNICODE" in op.name or "STRING" in op.name:
                pushed.append(arg)
    except Exception:  # noqa: BLE001 - damaged data: what was read before it is the answer
        pass
    return found


def _referenced_globals(path: Path) -> set[str] | None:
    """The globals the checkpoint's pickle names (None: not a torch zip archive). Registering
    only those keeps loads fast: torch rebuilds its lookup from every registered global at
    each opcode that uses one (0.5 s instead of 0.12 s for a yolov8n checkpoint)."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        pickles = [i for i in archive.infolist()
                   if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pickles) != 1 or pickles[0].file_size > 256 * 1024**2:
            return None
        return set(_pickle_globals(archive.read(pickles[0])))


def _entries_for(names: set[str] | None) -> list[tuple[Any, str]]:
    entries = _allow_list_entries()
    if names is None:
        return entries
    wanted = names | {f"\n{n}" for n in names}
    if "numpy.dtype" in names:  # a dtype is rebuilt as numpy.dtype(...), then BUILD on its class
        wanted |= {n for _, n in entries if n.startswith("numpy.dtypes.")}
    return [e for e in entries if e[1] in wanted]


def _check_registry(entries: list[tuple[Any, str]]) -> None:
    """Refuse to load while another part of the process has registered one of the allow-list's
    names process-wide for a different object (Ultralytics' ULTRALYTICS_SAFE_LOAD does, with
    the real classes): torch would pick either, and the real DetectionModel may be called."""
    import torch

    ours = {name: obj for obj, name in entries}
    for entry in torch.serialization.get_safe_globals():
        if isinstance(entry, tuple):
            obj, name = entry
        else:
            obj = entry
            name = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        if name in ours and ours[name] is not obj:
            raise CheckpointError(
                f"not loading: {name} is registered process-wide with torch.serialization."
                f"add_safe_globals (ULTRALYTICS_SAFE_LOAD?), which would bypass this loader's "
                f"checks; unset it")


def _refusal(path: Path, exc: BaseException) -> CheckpointError:
    """torch's error -> UnsafeCheckpoint naming the global, or CheckpointError for a damaged
    file. torch's own text is not passed on: it suggests loading with weights_only=False."""
    text = str(exc)
    for pattern, what in _REFUSALS:
        match = pattern.search(text)
        if match:
            return UnsafeCheckpoint(
                f"refused {path}: it {what.format(match.group(1).strip())}; an Ultralytics "
                f"detection checkpoint never does, and nothing in it was run. {HOW_TO_PROCEED}")
    if isinstance(exc, pickle.UnpicklingError) and not zipfile.is_zipfile(path):
        # torch's unpickler stops at opcodes torch.save never writes (protocol 4+ pickles)
        # before reading any global: name them from the opcodes instead.
        unknown = [g for g in _pickle_globals(path.read_bytes()) if g not in _allowed_names
                   and g.partition(".")[0] not in ("torch", "collections", "_codecs")]
        if unknown:
            return UnsafeCheckpoint(
                f"refused {path}: a plain pickle (not written by torch.save) that asks for "
                f"{', '.join(dict.fromkeys(unknown))}; nothing in it was run. {HOW_TO_PROCEED}")
    if isinstance(exc, EOFError):
        detail = "it ends early"
    else:
        detail = re.sub(r"\s+", " ", text.split("Check the documentation")[0].split(
            "WeightsUnpickler error:")[-1]).strip()[:200]
        detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return CheckpointError(f"{path} is not a PyTorch checkpoint ({detail})")


def load_checkpoint(path: str | Path, *, max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict:
    """The checkpoint dict of an Ultralytics detection `.pt`, read by torch's weights-only
    unpickler against the allow-list above; `UnsafeCheckpoint` when it names anything else,
    `CheckpointError` when it is missing, too large, damaged or not a detection checkpoint."""
    import torch

    path = _checked_file(path, max_bytes, "checkpoint")
    try:
        names = _referenced_globals(path)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({exc})") from None
    # safe_globals edits one process-wide set and removes its entries on exit: a lock keeps
    # one load's exit from stripping the list out from under another thread's load.
    with _load_lock:
        _check_registry(_allow_list_entries())
        entries = _entries_for(names)
        with torch.serialization.safe_globals(entries):
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, ValueError,
                    TypeError, AttributeError, IndexError, OSError) as exc:
                raise _refusal(path, exc) from None
    _check_contents(path, ckpt)
    return ckpt


def _check_contents(path: Path, ckpt: Any) -> None:
    from ultralytics.nn.tasks import DetectionModel

    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not an Ultralytics "
                              "checkpoint dict")
    model = ckpt.get("ema") or ckpt.get("model")
    if type(model) is not DetectionModel:
        raise CheckpointError(f"{path} holds no Ultralytics detection model (its 'model' is "
                              f"{type(model).__name__})")
    if not isinstance(ckpt.get("train_args") or {}, dict):
        raise CheckpointError(f"{path}: 'train_args' is not a dict")
    if ckpt.get("modelopt"):
        raise CheckpointError(f"{path} is a quantization-aware (QAT) checkpoint, not supported")
    _check_architecture(path, getattr(model, "yaml", None))


def _check_architecture(path: Path, spec: Any) -> None:
    """Ultralytics' parse_model rebuilds a checkpoint's network when training from it: it
    passes `activation` to eval() and looks layer names up in its module globals. Accept only
    what a model YAML can legitimately say there."""
    import torch.nn
    import ultralytics.nn.tasks as tasks

    def refuse(what: str) -> UnsafeCheckpoint:
        return UnsafeCheckpoint(f"refused {path}: its saved architecture {what}, which "
                                f"Ultralytics would evaluate as code when rebuilding the model. "
                                f"{HOW_TO_PROCEED}")

    def is_layer(obj: Any) -> bool:
        return isinstance(obj, type) and issubclass(obj, torch.nn.Module)

    if not isinstance(spec, dict):
        raise CheckpointError(f"{path}: the model has no architecture dict (model.yaml)")
    act = spec.get("activation")
    if act and not (isinstance(act, str) and _literal_nn_call(act)):
        raise refuse(f"sets activation {act!r} (not nn.<Layer>(literal arguments))")
    parts = [spec.get("backbone", []), spec.get("head", [])]
    if not all(isinstance(part, list) for part in parts):
        raise CheckpointError(f"{path}: malformed architecture (backbone/head not lists)")
    for layer in parts[0] + parts[1]:
        if not (isinstance(layer, (list, tuple)) and len(layer) == 4):
            raise CheckpointError(f"{path}: malformed layer {layer!r} in its architecture")
        name = layer[2]
        if not isinstance(name, str):
            raise refuse(f"names layer {name!r}")
        if name.startswith("nn."):
            obj = getattr(torch.nn, name[3:], None)
        elif name.startswith("torchvision.ops."):
            obj = getattr(importlib.import_module("torchvision.ops"), name[16:], None)
        else:
            obj = vars(tasks).get(name)
        if not is_layer(obj):
            raise refuse(f"names layer {name!r}, which is not a torch.nn.Module class")


def _literal_nn_call(text: str) -> bool:
    """`nn.SiLU()` / `torch.nn.LeakyReLU(0.1)`: a torch.nn layer with literal arguments."""
    import torch.nn

    try:
        call = ast.parse(text.strip(), mode="eval").body
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
            return False
        owner = ast.unparse(call.func.value)
        cls = getattr(torch.nn, call.func.attr, None)
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            ast.literal_eval(arg)
    except (SyntaxError, ValueError, TypeError):
        return False
    return owner in ("nn", "torch.nn") and isinstance(cls, type) and issubclass(
        cls, torch.nn.Module)


def yolo_from_checkpoint(path: str | Path, *, max_bytes: int = MAX_CHECKPOINT_BYTES) -> YOLO:
    """An `ultralytics.YOLO` (predict, val, export, train) built from `load_checkpoint(path)`;
    Ultralytics never opens the file itself."""
    from ultralytics import YOLO
    from ultralytics.cfg import DEFAULT_CFG_DICT

    ckpt = load_checkpoint(path, max_bytes=max_bytes)
    model = (ckpt.get("ema") or ckpt.get("model")).float()
    # What ultralytics.nn.tasks.load_checkpoint does to the model it unpickles.
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    model.pt_path = str(path)
    model.task = "detect"  # the only model class load_checkpoint lets through
    if not hasattr(model, "stride"):
        import torch

        model.stride = torch.tensor([32.0])
    model.eval()
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = True

    class _Loaded(YOLO):
        def _load(self, weights: str, task: str | None = None) -> None:
            # Model._load for a .pt, with the model above in place of Ultralytics' loader.
            self.model, self.ckpt = model, ckpt
            self.task = model.task
            self.overrides = model.args = self._reset_ckpt_args(model.args)
            self.ckpt_path = model.pt_path
            self.overrides["model"] = weights
            self.overrides["task"] = self.task
            self.model_name = weights

    return YOLO(_Loaded(str(path)))  # YOLO(model) adopts a built model's state as a plain YOLO


# --- ONNX --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # ONNX element type name, e.g. "UINT8", "FLOAT"
    shape: tuple[int | str, ...]  # a str is a named dynamic axis


@dataclass(frozen=True)
class OnnxSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def _graphs(graph):
    """`graph` and every subgraph of its nodes' attributes (If, Loop, Scan bodies)."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _tensors(graph):
    import onnx

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors


def _spec(value) -> TensorSpec:
    import onnx

    t = value.type.tensor_type
    shape = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
    return TensorSpec(value.name, onnx.TensorProto.DataType.Name(t.elem_type), shape)


def check_onnx(path: str | Path, *, max_bytes: int = MAX_ONNX_BYTES) -> OnnxSignature:
    """Check an ONNX file before Triton loads it: a valid model (onnx.checker, given the path
    so models with external data are checked whole), standard-domain operators only (a
    custom-domain op runs code from a library the file does not carry), external data only in
    files inside the model's folder, and `max_bytes` for the file and its data together.
    Returns its graph inputs and outputs; `CheckpointError` with the reason otherwise."""
    import onnx
    from google.protobuf.message import DecodeError

    path = _checked_file(path, max_bytes, "ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not an ONNX model ({exc})") from None
    if not model.graph.node:
        raise CheckpointError(f"{path} is not an ONNX model (its graph has no operators)")

    nodes = [n for g in _graphs(model.graph) for n in g.node]
    nodes += [n for f in model.functions for n in f.node]
    custom = sorted({f"{n.domain}::{n.op_type}" for n in nodes
                     if n.domain not in STANDARD_ONNX_DOMAINS})
    if custom:
        raise CheckpointError(f"refused {path}: operators outside the standard ONNX domains: "
                              f"{', '.join(custom)}")

    folder = path.parent.resolve()
    total = path.stat().st_size
    seen: set[Path] = set()
    for graph in _graphs(model.graph):
        for tensor in _tensors(graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            target = (folder / location).resolve()
            if Path(location).is_absolute() or not target.is_relative_to(folder) \
                    or target == folder:
                raise CheckpointError(f"refused {path}: tensor {tensor.name!r} reads external "
                                      f"data from {location!r}, outside {folder}")
            if not target.is_file():
                raise CheckpointError(f"{path}: external data {location!r} of tensor "
                                      f"{tensor.name!r} is missing")
            if target not in seen:
                seen.add(target)
                total += target.stat().st_size
    if total > max_bytes:
        raise CheckpointError(f"{path} and its external data are {total} bytes, over the "
                              f"{max_bytes}-byte limit")
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is not a valid ONNX model: {exc}") from None

    initializers = {t.name for t in model.graph.initializer}
    return OnnxSignature(
        tuple(_spec(v) for v in model.graph.input if v.name not in initializers),
        tuple(_spec(v) for v in model.graph.output))
