"""transformers backend: batched ``generate`` with left padding, on CPU or one GPU.

Slower than vLLM (no paged KV cache, no continuous batching) but needs nothing else; also
the reference vLLM is compared against in ``bench/generation.py``. JSON-schema constrained
decoding goes through xgrammar's logits processor (installed with vLLM).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ttpa_ray.engines.base import (Completion, Generation, Prompt, SamplingParams, TemplateChat, TopK, grouped,
                                  per_prompt)

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


class HFEngine(TemplateChat):
    def __init__(self, model_path: str, dtype: str = "bfloat16", max_model_len: int = 4096, seed: int = 0,
                 device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, _DTYPES[dtype]) if dtype in _DTYPES else "auto"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(self.device).eval()
        self.max_model_len = max_model_len
        self.seed = seed
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                            add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False)

    def _ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return list(prompt)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams]
                 ) -> list[Generation]:
        if isinstance(params, SamplingParams):
            return self._generate(prompts, params)
        results: list[Generation | None] = [None] * len(prompts)
        for p, idx in grouped(per_prompt(params, len(prompts))):
            for i, g in zip(idx, self._generate([prompts[i] for i in idx], p)):
                results[i] = g
        return [r for r in results if r is not None]

    def _generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        torch = self.torch
        ids = [self._ids(p) for p in prompts]
        results = [Generation(prompt_token_ids=x) for x in ids]
        ok = []
        for i, x in enumerate(ids):
            if len(x) + params.max_tokens > self.max_model_len:
                results[i].error = (f"prompt of {len(x)} tokens + max_tokens {params.max_tokens} exceeds "
                                    f"max_model_len {self.max_model_len}")
            elif not x:
                results[i].error = "empty prompt"
            else:
                ok.append(i)
        if not ok:
            return results
        if params.prompt_logprobs is not None:
            for i in ok:
                results[i].prompt_logprobs = self._prompt_logprobs(ids[i], params.prompt_logprobs,
                                                                   params.prompt_logprobs_from)
        if params.max_tokens == 0:
            return results
        with torch.no_grad():
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in ok]}, return_tensors="pt").to(self.device)
            if params.seed is not None:
                torch.manual_seed(params.seed)
            sample = params.temperature > 0
            out = self.model.generate(
                **batch, max_new_tokens=params.max_tokens, do_sample=sample, num_return_sequences=params.n,
                temperature=params.temperature if sample else None, top_p=params.top_p if sample else None,
                top_k=(params.top_k if params.top_k > 0 else None) if sample else None,
                output_logits=params.logprobs is not None, return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids),
                logits_processor=self._json_processor(params.json_schema, len(ok) * params.n),
                stop_strings=list(params.stop) or None, tokenizer=self.tokenizer,
            )
        width = batch["input_ids"].shape[1]
        new = out.sequences[:, width:]  # (B*n, T)
        logps = None
        if params.logprobs is not None:
            logps = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # (B*n, T, V)
        for row in range(new.shape[0]):
            i = ok[row // params.n]
            results[i].completions.append(self._completion(new[row], logps[row] if logps is not None else None,
                                                           params))
        return results

    def _completion(self, tokens: Any, logps: Any, params: SamplingParams) -> Completion:
        toks = tokens.tolist()
        end, reason = len(toks), "length"
        for t, tok in enumerate(toks):
            if tok in self.eos_ids:
                end, reason = t + 1, "stop"
                break
        toks = toks[:end]
        text = self.tokenizer.decode([t for t in toks if t not in self.eos_ids], skip_special_tokens=False)
        for s in params.stop:
            if s in text:
                text, reason = text[: text.index(s)], "stop"
        top = None
        if logps is not None:
            top = [self._topk(logps[t], params.logprobs, toks[t]) for t in range(len(toks))]
        return Completion(text=text, token_ids=toks, logprobs=top, finish_reason=reason)

    def _topk(self, row: Any, k: int, actual: int) -> TopK:
        vals, idx = row.topk(k) if k > 0 else (row[:0], row[:0].long())
        top = {int(j): float(v) for j, v in zip(idx.tolist(), vals.tolist())}
        top[int(actual)] = float(row[actual])
        return top

    def _prompt_logprobs(self, ids: list[int], k: int, start: int = 0) -> list[TopK | None]:
        """Top-k at every prompt position from ``start`` (logits only for those positions)."""
        torch = self.torch
        start = min(max(start, 1), len(ids))
        keep = len(ids) - start + 1  # hidden states start-1 .. T-1 predict tokens start .. T
        with torch.no_grad():
            logits = self.model(torch.tensor([ids], device=self.device), logits_to_keep=keep).logits[0].float()
        logps = logits.log_softmax(-1)  # row j predicts token start + j
        return [None] * start + [self._topk(logps[t - start], k, ids[t]) for t in range(start, len(ids))]

    def _json_processor(self, schema: dict | None, batch: int) -> Any:
        if schema is None:
            return None
        import json

        import xgrammar as xgr
        from transformers import LogitsProcessorList

        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
        compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema))
        return LogitsProcessorList([xgr.contrib.hf.LogitsProcessor([compiled] * batch)])

    def close(self) -> None:
        del self.model
