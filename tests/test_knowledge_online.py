"""The optional online routes against stand-in servers on 127.0.0.1 (never the network).

Each stand-in is a real HTTP server in a thread, answering like NCBI E-utilities or an
OpenAI-compatible chat endpoint, or failing on purpose: HTTP 500, too slow, not JSON, JSON of
the wrong shape.  Requests are counted to check that a panel is never fetched twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from napari_dkan.io.errors import DataError
from napari_dkan.knowledge import LlmSettings, NcbiSettings, gene_texts
from napari_dkan.knowledge.llm import parse_answer
from napari_dkan.knowledge.ncbi import _clean_summary

# ---------------------------------------------------------------------------------------------
# a stand-in HTTP server


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


Answer = tuple[int, bytes] | float  # (status, body), or seconds to stall before closing


@dataclass
class StandIn:
    respond: Callable[[Request], Answer]
    requests: list[Request] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def stand_in(monkeypatch) -> Iterator[Callable[[Callable[[Request], Answer]], StandIn]]:
    """Start stand-in servers; each is shut down after the test."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a user's proxy must not intercept
    servers: list[ThreadingHTTPServer] = []

    def start(respond: Callable[[Request], Answer]) -> StandIn:
        state = StandIn(respond)

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = Request(self.command, parts.path,
                              {k: v[0] for k, v in parse_qs(parts.query).items()},
                              json.loads(raw) if raw else None, dict(self.headers))
                state.requests.append(req)
                answer = state.respond(req)
                if isinstance(answer, float):  # too slow: the client gives up first
                    time.sleep(answer)
                    return
                status, body = answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _handle

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False  # a stalled handler must not hold up teardown
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        servers.append(server)
        state.url = f"http://127.0.0.1:{server.server_address[1]}"
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _json(payload: Any, status: int = 200) -> tuple[int, bytes]:
    return status, json.dumps(payload).encode()


# ---------------------------------------------------------------------------------------------
# NCBI E-utilities

SUMMARIES = {
    "2064": {"uid": "2064", "name": "ERBB2", "description": "erb-b2 receptor tyrosine kinase 2",
             "maplocation": "17q12",
             "summary": "This gene encodes a member of the EGF receptor family of receptor "
                        "tyrosine kinases. Amplification of this gene has been reported in "
                        "numerous cancers, including breast tumors. "
                        "[provided by RefSeq, Jul 2008]"},
    "6415": {"uid": "6415", "name": "SELENOW", "description": "selenoprotein W",
             "maplocation": "19q13.33", "summary": "This gene encodes a selenoprotein."},
    "4512": {"uid": "4512", "name": "COX1", "description": "cytochrome c oxidase subunit I",
             "maplocation": "", "summary": ""},  # NCBI has no summary for it
    "999001": {"uid": "999001", "name": "NEWGENE1", "description": "a gene named after 2022",
               "maplocation": "1p36", "summary": "A gene the 2022 snapshot does not know."},
}
FOUND_BY_SEARCH = {"NEWGENE1": ["999001"]}


def ncbi_answers(req: Request) -> Answer:
    if req.path.endswith("/esearch.fcgi"):
        symbol = req.query["term"].split("[sym]")[0]
        return _json({"esearchresult": {"count": "1", "idlist": FOUND_BY_SEARCH.get(symbol, [])}})
    if req.path.endswith("/esummary.fcgi"):
        ids = req.query["id"].split(",")
        result = {"uids": [i for i in ids if i in SUMMARIES]}
        result.update({i: SUMMARIES[i] for i in ids if i in SUMMARIES})
        return _json({"header": {"type": "esummary"}, "result": result})
    return _json({"error": "unknown tool"}, 404)


def _ncbi(server: StandIn, **kw: Any) -> NcbiSettings:
    return NcbiSettings(base_url=server.url + "/eutils", min_interval=0.0, **kw)


def test_ncbi_summaries_are_fetched_once_and_batched(stand_in):
    server = stand_in(ncbi_answers)
    genes = ["ERBB2", "SEPW1", "MT-CO1", "AP000769.1", "NEWGENE1"]
    texts = gene_texts(genes, "ncbi", "HER2-positive breast cancer", ncbi=_ncbi(server))
    by = {t.gene: t for t in texts}
    assert [t.gene for t in texts] == genes
    assert by["ERBB2"].origin == "ncbi" and by["ERBB2"].status == "ok"
    erbb2 = by["ERBB2"].text
    assert erbb2.startswith("Gene symbol: ERBB2. Name: erb-b2 receptor tyrosine kinase 2.")
    assert "Summary: This gene encodes a member of the EGF receptor family" in erbb2
    assert "provided by RefSeq" not in erbb2
    assert erbb2.endswith("Context: HER2-positive breast cancer.")
    assert by["SEPW1"].origin == "ncbi"
    assert by["NEWGENE1"].origin == "ncbi" and "A gene the 2022 snapshot" in by["NEWGENE1"].text
    # no summary at NCBI, or no such gene: the offline text, and the reason
    assert (by["MT-CO1"].origin, by["MT-CO1"].status) == ("offline", "no_summary")
    assert "cytochrome c oxidase subunit I" in by["MT-CO1"].text
    assert (by["AP000769.1"].origin, by["AP000769.1"].status) == ("offline", "not_found")

    # known genes go straight to esummary by Entrez id, all in one request
    tools = [r.path.rsplit("/", 1)[1] for r in server.requests]
    assert tools.count("esearch.fcgi") == 2  # the two names the table does not know
    summaries = [r for r in server.requests if r.path.endswith("esummary.fcgi")]
    assert len(summaries) == 1
    assert set(summaries[0].query["id"].split(",")) == {"2064", "6415", "4512", "999001"}
    assert summaries[0].query["retmode"] == "json" and summaries[0].query["db"] == "gene"

    n = len(server.requests)
    again = gene_texts(genes, "ncbi", "HER2-positive breast cancer", ncbi=_ncbi(server))
    assert len(server.requests) == n, "a panel must never be fetched twice"
    assert [t.text for t in again] == [t.text for t in texts]
    assert {t.gene: t.status for t in again}["ERBB2"] == "cached"
    assert {t.gene: t.status for t in again}["AP000769.1"] == "not_found"


FAILURES = {
    "http_error": lambda req: _json({"error": "busy"}, 500),
    "timeout": lambda req: 1.0,
    "malformed": lambda req: (200, b"<html>not json</html>"),
    "malformed-shape": lambda req: _json({"header": {}, "no": "result"}),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_ncbi_failures_fall_back_to_offline_text_and_are_retried_later(failure, stand_in):
    server = stand_in(FAILURES[failure])
    settings = _ncbi(server, timeout=0.3)
    [t] = gene_texts(["ERBB2"], "ncbi", ncbi=settings)
    [offline] = gene_texts(["ERBB2"])
    assert t.origin == "offline" and t.text == offline.text and t.fell_back
    assert t.status == failure.split("-")[0] and t.detail
    # failures are not stored: once the service answers, the gene is fetched
    server.respond = ncbi_answers
    [t] = gene_texts(["ERBB2"], "ncbi", ncbi=settings)
    assert (t.origin, t.status) == ("ncbi", "ok")


def test_ncbi_gives_up_after_three_failures_in_a_row(stand_in):
    server = stand_in(FAILURES["http_error"])
    genes = ["NOPE1", "NOPE2", "NOPE3", "NOPE4", "NOPE5"]  # unknown: one esearch each
    texts = gene_texts(genes, "ncbi", ncbi=_ncbi(server))
    assert [t.status for t in texts] == ["http_error"] * 3 + ["skipped"] * 2
    assert len(server.requests) == 3
    assert all(t.origin == "offline" for t in texts)


def test_ncbi_text_keeps_whole_sentences_within_90_words(stand_in):
    long_summary = " ".join(f"Sentence number {i} says a few words about it." for i in range(40))
    answers = {**SUMMARIES, "2064": {**SUMMARIES["2064"], "summary": long_summary}}

    def respond(req: Request) -> Answer:
        ids = req.query["id"].split(",")
        return _json({"result": {i: answers[i] for i in ids}})

    server = stand_in(respond)
    [t] = gene_texts(["ERBB2"], "ncbi", "breast cancer", ncbi=_ncbi(server))
    assert len(t.text.split()) <= 90
    summary = t.text.split("Summary: ")[1].split(" Context:")[0]
    assert summary.endswith("about it.") and summary.startswith("Sentence number 0")
    assert t.text.endswith("Context: breast cancer.")


def test_refseq_provenance_is_dropped():
    assert _clean_summary("Encodes X. [provided by RefSeq, Jul 2008]") == "Encodes X."


def test_bad_service_url_is_a_clear_error():
    with pytest.raises(DataError, match="NCBI E-utilities URL must be an http"):
        gene_texts(["ERBB2"], "ncbi", ncbi=NcbiSettings(base_url="ftp://example.org"))


# ---------------------------------------------------------------------------------------------
# an OpenAI-compatible chat endpoint


def _reply(content: str) -> tuple[int, bytes]:
    return _json({"id": "x", "object": "chat.completion",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                               "finish_reason": "stop"}]})


def _symbol_in(req: Request) -> str:
    return req.body["messages"][1]["content"].split("the human gene ")[1].split(" ")[0]


def chat_answers(req: Request) -> Answer:
    if req.path != "/v1/chat/completions" or req.method != "POST":
        return _json({"error": "not found"}, 404)
    symbol = _symbol_in(req)
    return _reply(json.dumps({
        "symbol": symbol,
        "functionality": f"{symbol} functionality in keywords",
        "phenotype": "linked to HER2-positive breast cancer",
        "keywords": ["kinase", "signalling"],
    }))


def _llm(server: StandIn, **kw: Any) -> LlmSettings:
    return LlmSettings(base_url=server.url, model="stand-in-model", **kw)


def test_llm_rewrites_in_the_papers_layout_once_per_panel(stand_in, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    server = stand_in(chat_answers)
    genes = ["ERBB2", "SEPW1"]
    texts = gene_texts(genes, "llm", "HER2-positive breast cancer", llm=_llm(server))
    assert [t.origin for t in texts] == ["llm", "llm"]
    assert texts[0].text == ("gene symbol: ERBB2. Functionality: ERBB2 functionality in keywords. "
                             "Phenotype: linked to HER2-positive breast cancer. "
                             "Keywords: kinase, signalling.")
    first = server.requests[0]
    assert first.body["model"] == "stand-in-model" and first.body["temperature"] == 0.0
    system, user = first.body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    prompt = user["content"]
    # the paper's prompt structure: task, knowledge, context, JSON output, word limit
    assert "HER2-positive breast cancer" in prompt and "under 90 words" in prompt
    assert '"functionality"' in prompt and '"phenotype"' in prompt and '"keywords"' in prompt
    assert "erb-b2 receptor tyrosine kinase 2" in prompt  # the offline facts to rewrite
    assert first.headers["Authorization"] == "Bearer sk-test-123"
    assert _symbol_in(server.requests[1]) == "SEPW1"

    again = gene_texts(genes, "llm", "HER2-positive breast cancer", llm=_llm(server))
    assert len(server.requests) == 2, "a panel must never be rewritten twice"
    assert [t.status for t in again] == ["cached", "cached"]
    assert [t.text for t in again] == [t.text for t in texts]
    # another disease context is another prompt: asked again
    gene_texts(["ERBB2"], "llm", "melanoma", llm=_llm(server))
    assert len(server.requests) == 3


def test_llm_reply_in_code_fences_is_accepted(stand_in):
    def fenced(req: Request) -> Answer:
        return _reply('Here it is:\n```json\n{"symbol": "ERBB2", "functionality": "kinase", '
                      '"phenotype": "breast cancer", "keywords": "a, b"}\n```')

    server = stand_in(fenced)
    [t] = gene_texts(["ERBB2"], "llm", llm=_llm(server))
    assert t.origin == "llm" and t.text.endswith("Keywords: a, b.")


LLM_FAILURES = {
    "http_error": lambda req: _json({"error": {"message": "overloaded"}}, 500),
    "timeout": lambda req: 1.0,
    "malformed-body": lambda req: (200, b"{not json"),
    "malformed-no-choices": lambda req: _json({"object": "chat.completion"}),
    "malformed-content": lambda req: _reply("ERBB2 is a receptor tyrosine kinase."),
    "malformed-keys": lambda req: _reply('{"symbol": "ERBB2", "functionality": "kinase"}'),
}


@pytest.mark.parametrize("failure", list(LLM_FAILURES))
def test_llm_failures_fall_back_to_offline_text(failure, stand_in):
    server = stand_in(LLM_FAILURES[failure])
    [t] = gene_texts(["ERBB2"], "llm", "breast cancer", llm=_llm(server, timeout=0.3))
    [offline] = gene_texts(["ERBB2"], "offline", "breast cancer")
    assert t.origin == "offline" and t.text == offline.text
    assert t.status == failure.split("-")[0] and t.detail
    server.respond = chat_answers  # not stored: asked again next time
    [t] = gene_texts(["ERBB2"], "llm", "breast cancer", llm=_llm(server))
    assert t.origin == "llm"


def test_llm_gives_up_after_three_failed_requests_in_a_row(stand_in):
    server = stand_in(LLM_FAILURES["http_error"])
    texts = gene_texts(["ERBB2", "KRT14", "IGKC", "ACTB", "CD74"], "llm", llm=_llm(server))
    assert [t.status for t in texts] == ["http_error"] * 3 + ["skipped"] * 2
    assert len(server.requests) == 3


def test_ncbi_then_llm_is_the_papers_route(stand_in):
    ncbi, chat = stand_in(ncbi_answers), stand_in(chat_answers)
    texts = gene_texts(["ERBB2", "AP000769.1"], "ncbi+llm", "HER2-positive breast cancer",
                       ncbi=_ncbi(ncbi), llm=_llm(chat))
    assert [t.origin for t in texts] == ["llm", "llm"]
    prompts = [r.body["messages"][1]["content"] for r in chat.requests]
    assert "Summary: This gene encodes a member of the EGF receptor family" in prompts[0]
    assert "No curated annotation" in prompts[1]  # NCBI had nothing: the offline facts
    assert texts[0].detail == "input from ncbi (ok)"


def test_parse_answer_normalises_keywords():
    answer = parse_answer('{"functionality": "f", "phenotype": "p", "keywords": " a , b ,"}')
    assert answer["keywords"] == ["a", "b"]


@pytest.mark.parametrize("url,endpoint", [
    ("http://h:1", "http://h:1/v1/chat/completions"),
    ("http://h:1/v1/", "http://h:1/v1/chat/completions"),
    ("http://h:1/openai/v1/chat/completions", "http://h:1/openai/v1/chat/completions"),
])
def test_llm_endpoint_from_base_url(url, endpoint):
    assert LlmSettings(base_url=url, model="m").endpoint == endpoint
