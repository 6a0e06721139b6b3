"""The words an event is searched by: one tokenizer for the events and the questions alike.

Words and ids: "cam-3", "model_v2.onnx" -> "model", "v2.onnx"; error codes split at "_" so that
"triton_unavailable" matches a question about "Triton unavailable". English words are stemmed
lightly ("promotion", "promoted" -> "promot") and function words dropped, so that a question's
words meet the logs' ones. Both stores use it: the SQLite store indexes these terms in FTS5 and
scores them with BM25+ (store.py); OpenSearch gets the question's terms as its query.
"""

from __future__ import annotations

import re
import unicodedata

TOKEN_REGEX = r"(?u)[^\W_]+(?:[-.][^\W_]+)*"
_TOKEN = re.compile(TOKEN_REGEX)

SUFFIXES = ("ations", "ation", "ions", "ion", "ings", "ing", "able", "ed", "er", "es", "s", "e")


def stem(token: str) -> str:
    """A light suffix stemmer for English words ("promotion", "promoted" -> "promot"), so that
    a question's words meet the logs' ones; ids and numbers ("cam-3", "503") stay as they are."""
    if not token.isalpha() or len(token) <= 4:
        return token
    for suffix in SUFFIXES:
        if token.endswith(suffix) and len(token) - len(suffix) >= 4:
            token = token[: -len(suffix)]
            break
    if len(token) > 4 and token[-1] == token[-2] and token[-1] not in "aeiouls":
        token = token[:-1]  # "stopped" -> "stopp" -> "stop"
    return token


# English function words. Log lines seldom contain them, so in BM25 they would be rare, hence
# heavy, terms: "why did ... to clients" matched error messages for their "to", not the events
# asked about. Dropped from questions and events alike.
STOPWORDS = frozenset("""
a about above after again all am an and any are as at be been before being below between both
but by can could did do does doing done during each few for from had has have having he her
here hers him his how i if in into is it its just me more most my no nor not now of off on once
only or other our out over own same she should so some such than that the their them then there
these they this those through to too under until up very was we were what when where which while
who whom why will with would you your happen happened happening anything something went going
get got tell show last recent recently
""".split())


def terms(text: str) -> list[str]:
    """The searchable terms of a text, in order (repeats kept: they are term frequencies)."""
    text = unicodedata.normalize("NFC", text.lower())
    return [stem(t) for t in _TOKEN.findall(text) if t not in STOPWORDS]
