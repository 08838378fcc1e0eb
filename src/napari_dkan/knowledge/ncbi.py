"""Optional online route: NCBI Gene summaries through E-utilities (off by default).

For a gene the knowledge table knows, its Entrez id is used directly (``esummary``, up to 200
ids per request); for a name the table does not know, ``esearch`` looks it up first
(``NAME[sym] AND 9606[taxid]``).  Answers -- summaries and "no such gene" alike -- are kept on
disk under the cache folder, keyed by the E-utilities address and the gene, so a panel is
fetched once.  Transient failures (timeout, HTTP error, unreachable host, malformed answer) are
not kept: the gene falls back to the offline text, its status says why, and the next run asks
again.  After three consecutive failed requests the remaining genes are skipped rather than
waiting out every timeout.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from napari_dkan.knowledge._http import FetchError, ResultStore, check_url, digest, request_json
from napari_dkan.knowledge.resolve import Resolution

NCBI_EUTILS = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils"
HUMAN_TAXID = 9606


@dataclass(frozen=True)
class NcbiSettings:
    """Where and how to ask NCBI.  ``api_key`` defaults to ``$NCBI_API_KEY``."""

    base_url: str = NCBI_EUTILS
    api_key: str | None = None
    email: str | None = None
    timeout: float = 20.0
    # NCBI asks for at most 3 requests per second without an API key, 10 with one.
    min_interval: float = 0.34
    batch_size: int = 200
    max_consecutive_failures: int = 3


@dataclass(frozen=True)
class NcbiSummary:
    """NCBI's answer for one gene, or why there is none."""

    status: str  # ok | not_found | timeout | http_error | network_error | malformed | skipped
    cached: bool = False
    entrez: int | None = None
    symbol: str = ""
    name: str = ""
    location: str = ""
    summary: str = ""
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.status == "ok" and bool(self.summary)


@dataclass
class _Client:
    settings: NcbiSettings
    requests: int = 0
    failures_in_a_row: int = 0
    last_request: float = field(default=0.0)

    @property
    def gave_up(self) -> bool:
        return self.failures_in_a_row >= self.settings.max_consecutive_failures

    def get(self, tool: str, params: dict[str, Any]) -> Any:
        s = self.settings
        params = {**params, "retmode": "json", "tool": "napari-dkan"}
        api_key = s.api_key or os.environ.get("NCBI_API_KEY")
        if api_key:
            params["api_key"] = api_key
        if s.email:
            params["email"] = s.email
        wait = s.min_interval - (time.monotonic() - self.last_request)
        if wait > 0:
            time.sleep(wait)
        self.last_request = time.monotonic()
        self.requests += 1
        try:
            data = request_json(f"{s.base_url}/{tool}.fcgi?{urlencode(params)}", timeout=s.timeout)
        except FetchError:
            self.failures_in_a_row += 1
            raise
        self.failures_in_a_row = 0
        if not isinstance(data, dict):
            raise FetchError("malformed", f"NCBI {tool} answered with JSON that is not an object")
        return data


def _search(client: _Client, name: str) -> int | None:
    data = client.get("esearch", {"db": "gene", "term": f"{name}[sym] AND {HUMAN_TAXID}[taxid]"})
    found = data.get("esearchresult")
    ids = found.get("idlist") if isinstance(found, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, (str, int)) for i in ids):
        raise FetchError("malformed", "NCBI esearch answer has no id list")
    try:
        return int(ids[0]) if ids else None
    except ValueError as exc:
        raise FetchError("malformed", f"NCBI esearch returned a non-numeric id {ids[0]!r}") from exc


def _summaries(client: _Client, ids: list[int]) -> dict[int, NcbiSummary]:
    data = client.get("esummary", {"db": "gene", "id": ",".join(map(str, ids))})
    result = data.get("result")
    if not isinstance(result, dict):
        raise FetchError("malformed", "NCBI esummary answer has no 'result' object")
    out = {}
    for entrez in ids:
        doc = result.get(str(entrez))
        if not isinstance(doc, dict) or doc.get("error"):
            out[entrez] = NcbiSummary("not_found", entrez=entrez, detail="NCBI has no record")
            continue
        text = doc.get("summary", "")
        if not isinstance(text, str):
            raise FetchError("malformed", f"NCBI esummary gave a non-text summary for {entrez}")
        out[entrez] = NcbiSummary(
            "ok", entrez=entrez, symbol=str(doc.get("name", "")),
            name=str(doc.get("description", "")), location=str(doc.get("maplocation", "")),
            summary=_clean_summary(text),
        )
    return out


def _clean_summary(text: str) -> str:
    """Drop RefSeq's provenance brackets ("[provided by RefSeq, Jul 2008]")."""
    return re.sub(r"\s*\[provided by [^\]]*\]\.?", "", text).strip()


def fetch_summaries(resolutions: list[Resolution],
                    settings: NcbiSettings = NcbiSettings()) -> list[NcbiSummary]:
    """NCBI's summary for every gene, in order; failures are statuses, never exceptions."""
    settings = replace(settings, base_url=check_url(settings.base_url, "the NCBI E-utilities URL"))
    store = ResultStore("ncbi", digest(settings.base_url)[:16])
    client = _Client(settings)
    results: dict[str, NcbiSummary] = {}

    def key(r: Resolution) -> str:
        return f"entrez:{r.record.entrez}" if r.record else f"symbol:{r.query}"

    def failed(exc: FetchError) -> NcbiSummary:
        return NcbiSummary(exc.kind, detail=str(exc))

    # 1. what is already stored
    for r in resolutions:
        k = key(r)
        if k not in results and (stored := store.get(k)) is not None:
            try:
                results[k] = NcbiSummary(**{**stored, "cached": True})
            except TypeError:  # written by another version of this module: fetch again
                pass

    # 2. names the table does not know: find their Entrez id first
    ids: dict[str, int] = {key(r): r.record.entrez for r in resolutions
                           if r.record and key(r) not in results}
    for r in resolutions:
        k = key(r)
        if r.record or k in results:
            continue
        if client.gave_up:
            results[k] = NcbiSummary("skipped", detail="NCBI stopped answering")
            continue
        try:
            found = _search(client, r.query)
        except FetchError as exc:
            results[k] = failed(exc)
            continue
        if found is None:
            results[k] = NcbiSummary("not_found", detail=f"NCBI Gene has no human gene {r.query}")
            store.put(k, asdict(results[k]))
        else:
            ids[k] = found

    # 3. summaries, in batches
    wanted = sorted(set(ids.values()))
    fetched: dict[int, NcbiSummary] = {}
    for start in range(0, len(wanted), settings.batch_size):
        batch = wanted[start:start + settings.batch_size]
        if client.gave_up:
            skipped = NcbiSummary("skipped", detail="NCBI stopped answering")
            fetched.update(dict.fromkeys(batch, skipped))
            continue
        try:
            fetched.update(_summaries(client, batch))
        except FetchError as exc:
            fetched.update({e: failed(exc) for e in batch})
    for k, entrez in ids.items():
        results[k] = fetched[entrez]
        if results[k].status in ("ok", "not_found"):
            store.put(k, asdict(results[k]))
    return [results[key(r)] for r in resolutions]


def ncbi_text(resolution: Resolution, summary: NcbiSummary, disease: str | None,
              max_words: int = 90) -> str | None:
    """A description from NCBI's summary, or None when there is no summary to use."""
    if not summary.usable:
        return None
    symbol = resolution.query
    head = [f"Gene symbol: {symbol}."]
    if summary.name:
        head.append(f"Name: {summary.name}.")
    if summary.location:
        head.append(f"Location: chromosome band {summary.location}.")
    tail = [f"Context: {disease.strip()}."] if disease and disease.strip() else []
    budget = max_words - len(" ".join(head + tail).split()) - 1
    body = _fit_sentences(summary.summary, max(budget, 0))
    return " ".join([*head, *([f"Summary: {body}"] if body else []), *tail])


def _fit_sentences(text: str, budget: int) -> str:
    """Whole sentences while they fit; a cut sentence only when not even the first fits."""
    sentences = re.split(r"(?<=\.)\s+", text)
    kept: list[str] = []
    for sentence in sentences:
        if len(" ".join([*kept, sentence]).split()) > budget:
            break
        kept.append(sentence)
    if kept:
        return " ".join(kept)
    words = text.split()[:budget]
    return (" ".join(words).rstrip(",;.") + ".") if words else ""
