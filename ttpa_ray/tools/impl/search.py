"""Search tools over a bundled encyclopedia of 40 short articles (``data/articles.json``):
cities, countries and science topics. Ranking is BM25 over title (weighted), tags and body.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any

from ttpa_ray.tools.impl._common import load, norm, req_bool, req_choice, req_int, req_list, req_str
from ttpa_ray.tools.impl._schema import array, boolean, enum, integer, spec, string

CATEGORIES = ["any", "city", "country", "science"]
_STOP = {"the", "a", "an", "of", "in", "on", "and", "or", "is", "are", "what", "which", "how", "to", "for", "about",
         "does", "do", "its", "it", "by", "with", "from", "at", "as", "be", "was", "that", "this", "tell", "me"}


def _tokens(text: str) -> list[str]:
    out = []
    for w in re.findall(r"[a-z0-9]+", norm(text)):
        if w in _STOP:
            continue
        out.append(w[:-1] if len(w) > 4 and w.endswith("s") and not w.endswith("ss") else w)
    return out


@lru_cache(maxsize=None)
def _index() -> tuple[list[dict[str, Any]], list[dict[str, float]], dict[str, int], float]:
    docs = load("articles.json")["articles"]
    tfs, df = [], {}
    for d in docs:
        tf: dict[str, float] = {}
        for weight, text in ((3.0, d["title"]), (2.0, " ".join(d["tags"])), (1.0, d["body"])):
            for t in _tokens(text):
                tf[t] = tf.get(t, 0.0) + weight
        tfs.append(tf)
        for t in tf:
            df[t] = df.get(t, 0) + 1
    avg = sum(sum(tf.values()) for tf in tfs) / len(tfs)
    return docs, tfs, df, avg


def _article(article_id: Any) -> dict[str, Any]:
    text = req_str("article_id", article_id)
    for d in load("articles.json")["articles"]:
        if d["id"] == text.lower() or norm(d["title"]) == norm(text):
            return d
    raise ValueError(f"unknown article_id {text!r}; use an id returned by search_articles, e.g. 'city-lisbon'")


def _snippet(body: str, terms: set[str], width: int = 220) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", body)
    best = max(sentences, key=lambda s: (len(terms & set(_tokens(s))), -sentences.index(s)))
    return best if len(best) <= width else best[: width - 1].rsplit(" ", 1)[0] + "…"


def search_articles(query: str, category: str = "any", limit: int = 5, tags: list[str] | None = None) -> dict[str, Any]:
    q = req_str("query", query)
    category = req_choice("category", category, CATEGORIES)
    limit = req_int("limit", limit, 1, 10)
    want_tags = {norm(req_str(f"tags[{i}]", t)) for i, t in enumerate(req_list("tags", tags or [], 0, 10))}
    terms = _tokens(q)
    if not terms:
        raise ValueError(f"`query` {q!r} has no searchable words")
    docs, tfs, df, avg = _index()
    k1, b, n = 1.4, 0.6, len(docs)
    hits = []
    for d, tf in zip(docs, tfs):
        if category != "any" and d["category"] != category:
            continue
        if want_tags and not want_tags <= {norm(t) for t in d["tags"]}:
            continue
        length = sum(tf.values())
        score = 0.0
        for t in dict.fromkeys(terms):  # ordered: float sums must not depend on hash seeds
            if t in tf:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                score += idf * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * length / avg))
        if score > 0:
            hits.append((round(score, 4), d))
    hits.sort(key=lambda h: (-h[0], h[1]["id"]))
    return {"query": q, "category": category, "total_matches": len(hits),
            "results": [{"article_id": d["id"], "title": d["title"], "category": d["category"], "score": s,
                         "snippet": _snippet(d["body"], set(terms))} for s, d in hits[:limit]]}


def get_article(article_id: str, max_chars: int = 2000) -> dict[str, Any]:
    d = _article(article_id)
    max_chars = req_int("max_chars", max_chars, 50, 10000)
    body = d["body"]
    cut = len(body) > max_chars
    return {"article_id": d["id"], "title": d["title"], "category": d["category"], "tags": list(d["tags"]),
            "text": body[:max_chars].rsplit(" ", 1)[0] + "…" if cut else body, "truncated": cut,
            "word_count": len(body.split())}


def find_related_articles(article_id: str, limit: int = 3, same_category: bool = False) -> dict[str, Any]:
    d = _article(article_id)
    limit = req_int("limit", limit, 1, 10)
    same_category = req_bool("same_category", same_category)
    mine = set(_tokens(" ".join([d["title"], *d["tags"]])))
    scored = []
    for o in load("articles.json")["articles"]:
        if o is d or (same_category and o["category"] != d["category"]):
            continue
        theirs = set(_tokens(" ".join([o["title"], *o["tags"]])))
        overlap = (len(mine & theirs) + 0.5 * len(mine & set(_tokens(o["body"])))
                   + (0.3 if o["category"] == d["category"] else 0))
        if overlap > 0:
            scored.append((round(overlap, 2), o))
    scored.sort(key=lambda x: (-x[0], x[1]["id"]))
    return {"article_id": d["id"], "related": [{"article_id": o["id"], "title": o["title"], "category": o["category"],
                                                "relevance": s} for s, o in scored[:limit]]}


# --------------------------------------------------------------------------- schemas

_ID = string("Article id from search_articles, e.g. 'city-lisbon' (an exact title also works).")

SPECS = [
    spec("search", "search:search_articles",
         "Search a small encyclopedia of articles about cities, countries and science topics; returns article "
         "ids, titles and matching snippets, best match first.",
         {"query": string("Keywords or a question, e.g. 'tallest building' or 'monsoon rain India'."),
          "category": enum(CATEGORIES, "Restrict to one category.", "any"),
          "limit": integer("Maximum number of results (1-10).", 5, minimum=1, maximum=10),
          "tags": array(string("Tag, e.g. 'europe' or 'geology'."), "Only articles carrying all of these tags.")},
         ["query"],
         [{"query": "tallest building in the world"},
          {"query": "earthquakes volcanoes", "category": "science", "limit": 3},
          {"query": "capital currency", "category": "country", "tags": ["europe"]}],
         query="Find encyclopedia articles about '{query}'[ in the {category} category]"
               "[, at most {limit} results][ tagged {tags}]."),
    spec("search", "search:get_article",
         "Get the full text of an encyclopedia article by its id.",
         {"article_id": _ID, "max_chars": integer("Truncate the text to this many characters (50-10000).", 2000,
                                                  minimum=50, maximum=10000)},
         ["article_id"], [{"article_id": "city-lisbon"}, {"article_id": "sci-tides", "max_chars": 200}],
         query="Show me the full text of the article {article_id}[, cut to {max_chars} characters]."),
    spec("search", "search:find_related_articles",
         "Find encyclopedia articles related to a given article (shared topics and tags).",
         {"article_id": _ID, "limit": integer("Maximum number of results (1-10).", 3, minimum=1, maximum=10),
          "same_category": boolean("Only articles of the same category.", False)},
         ["article_id"],
         [{"article_id": "sci-volcanoes"}, {"article_id": "country-japan", "limit": 5, "same_category": True}],
         query="Which articles are related to {article_id}[ (up to {limit})]"
               "[ (same category only: {same_category})]?"),
]
