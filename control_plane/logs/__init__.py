"""The log wing: the OTLP span receiver, the index of JSON logs, spans and the audit log, and the
question answering over it (routes and commands).

    receiver.py    OTLP/HTTP spans -> traces/spans.jsonl
    index.py       tails the files (offset, inode), parses lines into events, keeps errors,
                   warnings, slow requests, audit and lifecycle events with their traces,
                   counts and samples routine requests, applies retention (time, size)
    store.py       the LogStore interface and its SQLite FTS5 implementation (local)
    opensearch_store.py   the same interface over OpenSearch (cluster; imported on demand)
    terms.py       the tokenizer events and questions share
    timewords.py   times in questions, read in a stated time zone
    query.py       Haystack retrieval pipelines and the answer (coverage, cause, citations)
    embeddings.py  local sentence embeddings for the embedding and hybrid modes

May import the MLflow store, errors, settings and the gateway's telemetry module; never another
wing.
"""
