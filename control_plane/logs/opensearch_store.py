"""The log store in a cluster: OpenSearch through Haystack's integration (`opensearch-haystack`,
Apache-2.0), behind the same `LogStore` interface as the SQLite store (store.py).

Imported only when VG_LOGS_STORE=opensearch, so the base install does not carry the client
(`pip install opensearch-haystack`; the control-plane image installs it). The index is created
on first use with an `english` analyzer on the content (stemming and stop words, as terms.py does
here), numeric epoch/severity/duration fields for the time and level filters, keywords for every
other string, and a 384-dimension k-NN field for all-MiniLM-L6-v2 embeddings.

Everything goes through the Haystack document store and retrievers: BM25 is OpenSearch's own
(`OpenSearchBM25Retriever`, exact terms, fuzziness 0), listing most severe and newest first is
the same retriever with a sorted custom query, retention is `delete_by_filter`, relabelling a
decided routine event is `update_by_filter`. Only the index's size on disk (the size cap) needs
the low-level client's `indices.stats`. In a cluster, an ISM policy can do the time retention
too; the indexer's own deletes keep the behaviour the same as on one machine.

Not run against a server here (none can run on these machines): tests/test_log_store.py drives
this class through the real opensearch-py client and Haystack's store with a fake transport that
answers the OpenSearch REST calls they make.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from haystack import Document
from haystack.document_stores.types import DuplicatePolicy

from control_plane.logs.terms import STOPWORDS, TOKEN_REGEX
from control_plane.settings import Settings

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2, the local embedding model (embeddings.py)
MAPPINGS: dict[str, Any] = {
    "properties": {
        "content": {"type": "text", "analyzer": "english"},
        "embedding": {"type": "knn_vector", "dimension": EMBEDDING_DIM, "index": True},
        "epoch": {"type": "double"},
        "severity": {"type": "integer"},
        "line": {"type": "long"},
        "duration_ms": {"type": "double"},
    },
    "dynamic_templates": [{"strings": {"match_mapping_type": "string",
                                       "mapping": {"type": "keyword", "ignore_above": 1024}}}],
}
# One shard: a control plane's logs are a small index; replicas as the cluster allows (the
# k8s component runs one node, so none).
INDEX_SETTINGS: dict[str, Any] = {"index.knn": True, "number_of_shards": 1,
                                  "number_of_replicas": 0}
PAGE = 10_000
_WORD = re.compile(TOKEN_REGEX)


class OpenSearchLogStore:
    """Events in an OpenSearch index, through Haystack's OpenSearchDocumentStore."""

    name = "opensearch"

    def __init__(self, document_store: Any) -> None:
        from haystack_integrations.components.retrievers.opensearch import (
            OpenSearchBM25Retriever, OpenSearchEmbeddingRetriever)

        self.ds = document_store
        self._bm25 = OpenSearchBM25Retriever(document_store=document_store, fuzziness=0)
        self._dense = OpenSearchEmbeddingRetriever(document_store=document_store)

    @classmethod
    def from_settings(cls, settings: Settings, **client_kwargs: Any) -> "OpenSearchLogStore":
        """`client_kwargs` go to the opensearch-py client (a test's connection_class)."""
        try:
            from haystack_integrations.document_stores.opensearch import OpenSearchDocumentStore
        except ImportError as exc:
            raise ImportError("VG_LOGS_STORE=opensearch needs Haystack's OpenSearch "
                              "integration: pip install opensearch-haystack") from exc
        return cls(OpenSearchDocumentStore(
            hosts=settings.logs_opensearch_url, index=settings.logs_opensearch_index,
            mappings=MAPPINGS, settings=INDEX_SETTINGS, embedding_dim=EMBEDDING_DIM,
            **client_kwargs))

    # -- writing -------------------------------------------------------------------------------

    def write(self, docs: list[Document]) -> int:
        if not docs:
            return 0
        # `create`: an event already indexed (a line read again after a crash) is skipped.
        return self.ds.write_documents(docs, policy=DuplicatePolicy.SKIP, refresh="wait_for")

    def relabel(self, ids: list[str], keep: str) -> None:
        for i in range(0, len(ids), 1000):
            self.ds.update_by_filter({"field": "id", "operator": "in", "value": ids[i:i + 1000]},
                                     meta={"keep": keep}, refresh=True)

    def delete_documents(self, ids: list[str]) -> None:
        if ids:
            self.ds.delete_documents(list(ids))

    def delete_before(self, epoch: float) -> int:
        return self.ds.delete_by_filter({"field": "meta.epoch", "operator": "<", "value": epoch},
                                        refresh=True)

    def evict_oldest(self, count: int, keep: str | None = None) -> tuple[int, float | None]:
        filters = {"field": "meta.keep", "operator": "==", "value": keep} if keep else None
        oldest = self._sorted(filters, [{"epoch": "asc"}], min(count, PAGE))
        if not oldest:
            return 0, None
        boundary = oldest[-1].meta["epoch"]
        cond = {"field": "meta.epoch", "operator": "<=", "value": boundary}
        n = self.ds.delete_by_filter(
            {"operator": "AND", "conditions": [filters, cond]} if filters else cond,
            refresh=True)
        return n, boundary

    def compact(self) -> None:
        """OpenSearch merges segments (and drops deleted documents) by itself."""

    # -- embeddings ----------------------------------------------------------------------------

    def missing_embeddings(self, limit: int) -> list[Document]:
        return self.ds.filter_documents(
            {"field": "embedding", "operator": "==", "value": None})[:limit]

    def set_embeddings(self, docs: list[Document]) -> None:
        self.ds.write_documents(docs, policy=DuplicatePolicy.OVERWRITE, refresh="wait_for")

    def clear_embeddings(self) -> None:
        log.warning("the embedding model changed: OpenSearch keeps the old vectors until the "
                    "index %s is deleted and rebuilt", self.ds._index)

    def count_embedded(self) -> int:
        return self.ds.count_documents_by_filter(
            {"field": "embedding", "operator": "!=", "value": None})

    # -- reading -------------------------------------------------------------------------------

    def count_documents(self) -> int:
        return self.ds.count_documents()

    def size_bytes(self) -> int:
        self.ds._ensure_initialized()  # the store has no public call for the index's size
        stats = self.ds._client.indices.stats(index=self.ds._index, metric="store")
        return int(stats["_all"]["primaries"]["store"]["size_in_bytes"])

    def time_range(self) -> tuple[float, float] | None:
        found = self.ds.get_metadata_field_min_max("epoch")
        if found.get("min") is None:
            return None
        return float(found["min"]), float(found["max"])

    def values(self, field: str) -> set[str]:
        values, _ = self.ds.get_metadata_field_unique_values(field, size=1000)
        return {str(v) for v in values if v not in (None, "")}

    def count_by(self, field: str) -> dict[str, int]:
        return {v: self.ds.count_documents_by_filter(
            {"field": f"meta.{field}", "operator": "==", "value": v})
            for v in sorted(self.values(field))}

    def filter_documents(self, filters: dict | None = None) -> list[Document]:
        return self.ds.filter_documents(filters)

    def latest(self, filters: dict | None, top_k: int) -> list[Document]:
        return self._sorted(filters, [{"severity": "desc"}, {"epoch": "desc"}], top_k)

    def _sorted(self, filters: dict | None, sort: list[dict], size: int) -> list[Document]:
        query = {"bool": {"filter": "$filters"}} if filters else {"match_all": {}}
        return self._bm25.run(query="*", filters=filters, top_k=size,
                              custom_query={"query": query, "sort": sort})["documents"]

    def bm25(self, query: str, filters: dict | None = None, top_k: int = 10) -> list[Document]:
        words = [w for w in _WORD.findall(query.lower()) if w not in STOPWORDS]
        if not words:
            return []
        return self._bm25.run(query=" ".join(words), filters=filters, top_k=top_k)["documents"]

    def dense(self, embedding: list[float], filters: dict | None = None,
              top_k: int = 10) -> list[Document]:
        return self._dense.run(query_embedding=embedding, filters=filters,
                               top_k=top_k)["documents"]
