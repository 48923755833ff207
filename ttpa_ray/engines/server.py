"""A small OpenAI-compatible server over any local engine (``ttpa serve``).

Serves ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` with
vLLM's extensions that the project uses (``prompt_logprobs``, ``top_k``,
``structured_outputs.json``, ``return_tokens_as_token_ids``). Meant for a local endpoint
over the transformers or vLLM backend; for production serving use ``vllm serve``.
Requests are handled one at a time (one engine, no batching across requests).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ttpa_ray.engines.base import Engine, Generation, SamplingParams

log = logging.getLogger(__name__)


def _params(body: dict[str, Any]) -> SamplingParams:
    stop = body.get("stop") or ()
    schema = (body.get("structured_outputs") or {}).get("json")
    fmt = body.get("response_format") or {}
    if schema is None and fmt.get("type") == "json_schema":
        schema = fmt["json_schema"].get("schema")
    lp = body.get("logprobs")
    if lp is True:  # chat API: logprobs=true + top_logprobs=k
        lp = body.get("top_logprobs", 0)
    elif lp is False:
        lp = None
    return SamplingParams(
        max_tokens=int(body.get("max_tokens") or 16), temperature=float(body.get("temperature", 1.0)),
        top_p=float(body.get("top_p", 1.0)), top_k=int(body.get("top_k", -1)), n=int(body.get("n", 1)),
        seed=body.get("seed"), stop=(stop,) if isinstance(stop, str) else tuple(stop), logprobs=lp,
        prompt_logprobs=body.get("prompt_logprobs"), json_schema=schema,
    )


def completions_response(gen: Generation, model: str, as_ids: bool) -> dict[str, Any]:
    def tok(t: int) -> str:
        return f"token_id:{t}" if as_ids else str(t)

    choices = []
    for i, c in enumerate(gen.completions):
        logprobs = None
        if c.logprobs is not None:
            logprobs = {"tokens": [tok(t) for t in c.token_ids],
                        "token_logprobs": [c.logprobs[j].get(t) for j, t in enumerate(c.token_ids)],
                        "top_logprobs": [{tok(t): v for t, v in top.items()} for top in c.logprobs]}
        choices.append({"index": i, "text": c.text, "logprobs": logprobs, "finish_reason": c.finish_reason,
                        "token_ids": c.token_ids})
    body: dict[str, Any] = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                            "model": model, "choices": choices, "prompt_token_ids": gen.prompt_token_ids}
    if gen.prompt_logprobs is not None:
        body["prompt_logprobs"] = [None if e is None else {str(t): {"logprob": v} for t, v in e.items()}
                                   for e in gen.prompt_logprobs]
    return body


def make_handler(engine: Engine, model_name: str) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug(fmt, *args)

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model"}]})
            elif self.path == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                params = _params(body)
            except (ValueError, TypeError, KeyError) as exc:
                self._send(400, {"error": {"message": f"bad request: {exc}", "type": "invalid_request_error"}})
                return
            path = self.path.rstrip("/")
            if path == "/v1/completions":
                prompt = body.get("prompt")
                if not isinstance(prompt, (str, list)) or prompt == []:
                    self._send(400, {"error": {"message": "prompt must be a string or a list of token ids"}})
                    return
                with lock:
                    gen = engine.generate([prompt], params)[0]
                if gen.error:
                    self._send(400, {"error": {"message": gen.error, "type": "invalid_request_error"}})
                    return
                self._send(200, completions_response(gen, model_name, bool(body.get("return_tokens_as_token_ids"))))
            elif path == "/v1/chat/completions":
                with lock:
                    gen = engine.chat([body.get("messages") or []], params, tools=body.get("tools"))[0]
                if gen.error:
                    self._send(400, {"error": {"message": gen.error, "type": "invalid_request_error"}})
                    return
                self._send(200, {
                    "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                    "model": model_name,
                    "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                                 "finish_reason": c.finish_reason} for i, c in enumerate(gen.completions)]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

    return Handler


def serve(engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """Build a server (call ``serve_forever()`` on it, or run it in a thread)."""
    return ThreadingHTTPServer((host, port), make_handler(engine, model_name))
