"""The one generation interface every stage uses.

An engine takes prompts (text or token ids) and :class:`SamplingParams` and returns, per
prompt, the prompt's token ids, optionally the prompt's top-k log-probs (teacher forcing a
given continuation in one forward pass), and ``n`` completions with token ids and top-k
log-probs per generated token. Log-prob maps are ``{token_id: logprob}``; in a prompt
log-prob entry the actual token is always present (plus the top-k alternatives).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

Prompt = str | list[int]
TopK = dict[int, float]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    """Top-k log-probs per generated token (None: none)."""
    prompt_logprobs: int | None = None
    """Top-k log-probs per prompt token (None: none); 0 gives the actual token only."""
    prompt_logprobs_from: int = 0
    """Prompt positions before this one need no log-probs (they are None in the result): an
    engine may then serve that part of the prompt from its prefix cache and project to the
    vocabulary only from here on (TPS reads log-probs of the gold answer, not of the prompt)."""
    json_schema: dict[str, Any] | None = None
    """Constrain the output to JSON valid under this schema."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < 0:
            problems.append(f"max_tokens must be >= 0, got {self.max_tokens}")
        if self.n < 1:
            problems.append(f"n must be >= 1, got {self.n}")
        if self.prompt_logprobs_from < 0:
            problems.append(f"prompt_logprobs_from must be >= 0, got {self.prompt_logprobs_from}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[TopK] | None = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """Structured calls, when the server parsed them (OpenAI chat API); else parse ``text``."""


@dataclass
class Generation:
    prompt_token_ids: list[int]
    completions: list[Completion] = field(default_factory=list)
    prompt_logprobs: list[TopK | None] | None = None
    """One entry per prompt token; the first is None (nothing predicts it)."""
    error: str | None = None
    """Set when this prompt failed; the other prompts of the batch are unaffected."""


class Engine(Protocol):
    """What every backend implements."""

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams]
                 ) -> list[Generation]:
        """``params`` is one SamplingParams for all prompts, or one per prompt."""
        ...

    def apply_chat_template(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str: ...

    def chat(self, conversations: Sequence[list[dict[str, Any]]], params: SamplingParams,
             tools: list[dict[str, Any]] | None = None) -> list[Generation]: ...

    def close(self) -> None: ...


def per_prompt(params: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise ValueError(f"got {len(params)} SamplingParams for {n} prompts")
    return params


def grouped(params: list[SamplingParams]) -> list[tuple[SamplingParams, list[int]]]:
    """Indices of prompts sharing the same params (engines without per-prompt params)."""
    groups: dict[int, tuple[SamplingParams, list[int]]] = {}
    for i, p in enumerate(params):
        key = id(p)
        for k, (q, idx) in groups.items():
            if q == p:
                key = k
                break
        groups.setdefault(key, (p, []))[1].append(i)
    return list(groups.values())


class TemplateChat:
    """``chat()`` for local engines: render with the model's chat template, then generate."""

    def chat(self, conversations: Sequence[list[dict[str, Any]]],
             params: SamplingParams | Sequence[SamplingParams],
             tools: list[dict[str, Any]] | None = None) -> list[Generation]:
        prompts = [self.apply_chat_template(m, tools=tools) for m in conversations]  # type: ignore[attr-defined]
        return self.generate(prompts, params)  # type: ignore[attr-defined]
