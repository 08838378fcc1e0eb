"""Optional online route: rewrite gene knowledge with a language model (off by default).

Any OpenAI-compatible ``/v1/chat/completions`` endpoint works (a hosted service, or a local
server such as vLLM, llama.cpp or Ollama).  The prompt follows the structure the DKAN paper
describes: a role, a task, the knowledge to rewrite, the disease context, and an answer as JSON
with ``symbol``, ``functionality``, ``phenotype`` and ``keywords``, under 90 words, written in
keywords rather than prose.  The answer becomes::

    gene symbol: ERBB2. Functionality: .... Phenotype: .... Keywords: ...

Answers are kept on disk keyed by (endpoint, model, prompt), so the same panel with the same
knowledge is rewritten once.  Timeouts, HTTP errors and answers that are not the requested JSON
are reported per gene and the gene keeps its input text.  The API key is read from an
environment variable (``$OPENAI_API_KEY`` by default) and never stored.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from napari_dkan.knowledge._http import FetchError, ResultStore, check_url, digest, request_json


@dataclass(frozen=True)
class LlmSettings:
    """An OpenAI-compatible chat endpoint: base URL (``.../v1`` optional) and model name."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    temperature: float = 0.0
    max_words: int = 90
    max_consecutive_failures: int = 3

    @property
    def endpoint(self) -> str:
        url = check_url(self.base_url, "the language-model URL")
        if url.endswith("/chat/completions"):
            return url
        return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


@dataclass(frozen=True)
class Rewrite:
    """The model's text for one gene, or why there is none."""

    status: str  # ok | timeout | http_error | network_error | malformed | skipped
    text: str = ""
    cached: bool = False
    detail: str = ""


SYSTEM_PROMPT = (
    "You are a molecular biologist who writes precise, compact gene descriptions for a model "
    "that predicts spatial gene expression from tissue images."
)


def build_messages(symbol: str, knowledge: str, disease: str | None,
                   max_words: int = 90) -> list[dict[str, str]]:
    """The chat messages for one gene: role, task, knowledge, context, output format."""
    context = disease.strip() if disease and disease.strip() else "human tissue"
    task = (
        f"Task: rewrite the knowledge below about the human gene {symbol} into a structured "
        f"description for the context of {context}.\n"
        f"Knowledge:\n{knowledge}\n\n"
        "Output: only a JSON object with the keys \"symbol\" (the gene symbol), "
        "\"functionality\" (what the gene product does), \"phenotype\" (phenotypes and diseases "
        f"it is linked to, naming {context} where relevant) and \"keywords\" (a list of up to "
        f"8 keywords). Write in keywords and short phrases, not full sentences; under "
        f"{max_words} words in total; do not invent facts that the knowledge does not support."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task}]


def _content(data: Any) -> str:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise FetchError("malformed", "the answer has no choices[0].message.content") from exc
    if not isinstance(content, str):
        raise FetchError("malformed", "the answer's message content is not text")
    return content


def parse_answer(content: str) -> dict[str, Any]:
    """The JSON object in a model's reply (code fences and chatter around it tolerated)."""
    match = re.search(r"\{.*\}", content, flags=re.S)
    if not match:
        raise FetchError("malformed", "the model's reply holds no JSON object")
    try:
        answer = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise FetchError("malformed", f"the model's JSON does not parse ({exc.msg})") from exc
    if not isinstance(answer, dict):
        raise FetchError("malformed", "the model's JSON is not an object")
    for key in ("functionality", "phenotype"):
        if not isinstance(answer.get(key), str) or not answer[key].strip():
            raise FetchError("malformed", f"the model's JSON lacks a text {key!r}")
    keywords = answer.get("keywords", [])
    if isinstance(keywords, str):
        keywords = [k.strip() for k in keywords.split(",")]
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        raise FetchError("malformed", "the model's 'keywords' is not a list of words")
    answer["keywords"] = [k.strip() for k in keywords if k.strip()]
    return answer


def answer_text(symbol: str, answer: dict[str, Any], max_words: int = 90) -> str:
    """The paper's text layout from a parsed answer, cut to ``max_words``."""
    core = (f"gene symbol: {symbol}. Functionality: {answer['functionality'].strip().rstrip('.')}. "
            f"Phenotype: {answer['phenotype'].strip().rstrip('.')}.")
    if answer["keywords"]:
        with_keywords = f"{core} Keywords: {', '.join(answer['keywords'])}."
        if len(with_keywords.split()) <= max_words:
            return with_keywords
    words = core.split()
    return core if len(words) <= max_words else " ".join(words[:max_words]).rstrip(",;.") + "."


def rewrite_all(items: list[tuple[str, str]], disease: str | None,
                settings: LlmSettings) -> list[Rewrite]:
    """Rewrite every ``(symbol, knowledge)`` pair, in order; failures are statuses."""
    endpoint = settings.endpoint
    store = ResultStore("llm")
    headers = {}
    api_key = os.environ.get(settings.api_key_env, "")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    failures_in_a_row = 0
    out: list[Rewrite] = []
    for symbol, knowledge in items:
        messages = build_messages(symbol, knowledge, disease, settings.max_words)
        key = digest(endpoint, settings.model, settings.temperature, messages)
        if (stored := store.get(key)) is not None:
            out.append(Rewrite("ok", answer_text(symbol, stored, settings.max_words), cached=True))
            continue
        if failures_in_a_row >= settings.max_consecutive_failures:
            out.append(Rewrite("skipped", detail="the language model stopped answering"))
            continue
        payload = {"model": settings.model, "messages": messages,
                   "temperature": settings.temperature}
        try:
            answer = parse_answer(_content(request_json(endpoint, payload, headers,
                                                        settings.timeout)))
        except FetchError as exc:
            # a malformed reply is the model's fault, not the endpoint's: keep going
            failures_in_a_row = 0 if exc.kind == "malformed" else failures_in_a_row + 1
            out.append(Rewrite(exc.kind, detail=str(exc)))
            continue
        failures_in_a_row = 0
        store.put(key, answer)
        out.append(Rewrite("ok", answer_text(symbol, answer, settings.max_words)))
    return out
