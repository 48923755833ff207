"""Any OpenAI-compatible HTTP endpoint (vLLM's server, ``ttpa serve``, hosted APIs).

Raw prompts go to ``/v1/completions`` (token ids are sent as a list of ints), conversations
to ``/v1/chat/completions``. vLLM's extensions are sent when asked for: ``prompt_logprobs``,
``top_k``, ``structured_outputs`` (JSON schema) and ``return_tokens_as_token_ids`` (so token
ids come back exactly). The API key is read from the environment variable the config
names; it is never logged or written anywhere: server replies (some servers echo the key they
were sent) and error texts are redacted before they leave the engine.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from ttpa_ray.engines.base import Completion, Generation, Prompt, SamplingParams, TopK, per_prompt

log = logging.getLogger(__name__)


class OpenAIEngine:
    def __init__(self, api_base: str, model: str, api_key_env: str | None = None, timeout_s: float = 300.0,
                 max_concurrency: int = 8, tokenizer_path: str | None = None):
        self.api_base = api_base.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.api_key_env = api_key_env
        self.session = requests.Session()
        self._api_key: str | None = None
        if api_key_env:
            key = (os.environ.get(api_key_env) or "").strip()
            if not key:
                raise RuntimeError(f"engine.api_key_env names {api_key_env}, but that environment variable is "
                                   "not set; export it (for ray job submit: --runtime-env-json with env_vars)")
            if not key.isprintable() or any(c.isspace() for c in key):  # requests would quote it in its error
                raise RuntimeError(f"the value of {api_key_env} has spaces or control characters inside; export "
                                   "the key alone (its value is not shown here)")
            self._api_key = key
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.tokenizer = None
        if tokenizer_path:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    def __repr__(self) -> str:
        return f"OpenAIEngine(api_base={self.api_base!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "<redacted>") if self._api_key else text

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                            add_generation_prompt: bool = True) -> str:
        if self.tokenizer is None:
            raise RuntimeError("rendering prompts locally needs engine.tokenizer (a local model name or folder); "
                               "or use chat() and let the server render them")
        return self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.session.post(f"{self.api_base}{path}", json=body, timeout=self.timeout_s)
        text = self._redact(resp.text)  # a server may echo the key, in an error or even in a completion
        if resp.status_code != 200:
            raise RuntimeError(f"{path} returned HTTP {resp.status_code}: {text[:500]}")
        return json.loads(text)

    def _body(self, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_tokens, "n": params.n,
                                "temperature": params.temperature, "top_p": params.top_p}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.prompt_logprobs is not None:
            body["prompt_logprobs"] = params.prompt_logprobs
        if params.json_schema is not None:
            body["structured_outputs"] = {"json": params.json_schema}
        return body

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams]
                 ) -> list[Generation]:
        plist = per_prompt(params, len(prompts))

        def one(item: tuple[Prompt, SamplingParams]) -> Generation:
            prompt, params = item
            body = self._body(params) | {"prompt": prompt, "return_tokens_as_token_ids": True}
            if params.logprobs is not None:
                body["logprobs"] = params.logprobs
            try:
                return self._from_completions(self._post("/completions", body), prompt, params)
            except Exception as exc:  # noqa: BLE001 - one failed request is an error row, not a crash
                return Generation(prompt_token_ids=list(prompt) if isinstance(prompt, list) else [],
                                  error=self._redact(f"{type(exc).__name__}: {exc}"))

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(one, zip(prompts, plist)))

    def chat(self, conversations: Sequence[list[dict[str, Any]]], params: SamplingParams | Sequence[SamplingParams],
             tools: list[dict[str, Any]] | None = None) -> list[Generation]:
        plist = per_prompt(params, len(conversations))

        def one(item: tuple[list[dict[str, Any]], SamplingParams]) -> Generation:
            messages, params = item
            body = self._body(params) | {"messages": messages}
            if tools:
                body["tools"] = tools
            try:
                data = self._post("/chat/completions", body)
            except Exception as exc:  # noqa: BLE001
                return Generation(prompt_token_ids=[], error=self._redact(f"{type(exc).__name__}: {exc}"))
            gen = Generation(prompt_token_ids=[])
            for choice in data["choices"]:
                msg = choice["message"]
                text = msg.get("content") or ""
                gen.completions.append(Completion(text=text, token_ids=[], finish_reason=choice.get("finish_reason"),
                                                  tool_calls=msg.get("tool_calls")))
            return gen

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(one, zip(conversations, plist)))

    @staticmethod
    def _token_id(token: str) -> int:
        if not token.startswith("token_id:"):
            raise ValueError(f"server returned token {token!r} without its id; it must support "
                             "return_tokens_as_token_ids (vLLM and `ttpa serve` do)")
        return int(token.removeprefix("token_id:"))

    def _from_completions(self, data: dict[str, Any], prompt: Prompt, params: SamplingParams) -> Generation:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        prompt_ids = data.get("prompt_token_ids") or choices[0].get("prompt_token_ids")
        if prompt_ids is None:
            prompt_ids = list(prompt) if isinstance(prompt, list) else []
        gen = Generation(prompt_token_ids=list(prompt_ids))
        raw_plp = data.get("prompt_logprobs") or choices[0].get("prompt_logprobs")
        if params.prompt_logprobs is not None and raw_plp is not None:
            gen.prompt_logprobs = [None if e is None else {int(t): float(v["logprob"] if isinstance(v, dict) else v)
                                                           for t, v in e.items()} for e in raw_plp]
        for c in choices:
            lp = c.get("logprobs")
            ids, top = [], None
            if lp is not None:
                ids = [self._token_id(t) for t in lp["tokens"]]
                top = [
                    ({self._token_id(t): float(v) for t, v in (alts or {}).items()} | {tid: float(v0)})
                    for tid, v0, alts in zip(ids, lp["token_logprobs"], lp.get("top_logprobs") or [None] * len(ids))
                ]
            elif c.get("token_ids") is not None:
                ids = list(c["token_ids"])
            gen.completions.append(Completion(text=c["text"], token_ids=ids, logprobs=top,
                                              finish_reason=c.get("finish_reason")))
        return gen

    def close(self) -> None:
        self.session.close()


def topk_to_json(top: TopK) -> dict[str, float]:
    return {f"token_id:{t}": v for t, v in top.items()}
