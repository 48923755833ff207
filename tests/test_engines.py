"""Engines for real: vLLM inside a Ray actor (top-k logprobs, prompt_logprobs), a Ray Data
actor pool, JSON-schema constrained decoding, and the OpenAI-compatible HTTP backend
against a server started on 127.0.0.1."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time

import jsonschema
import pytest

from conftest import actor_resources
from ttpa_ray.config import EngineConfig, PoolConfig
from ttpa_ray.engines.base import SamplingParams

pytestmark = pytest.mark.slow

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                           "days": {"type": "integer"}},
          "required": ["city", "unit", "days"], "additionalProperties": False}


def _tiny_cfg(**kw) -> dict:
    return EngineConfig(backend="vllm", model="tiny-random", dtype="float32", max_model_len=512, **kw).model_dump()


def test_vllm_in_ray_actor_logprobs_and_prompt_logprobs(tiny_model, ray_local):
    from ttpa_ray.engines.actors import EngineActor

    actor = ray_local.remote(num_cpus=1)(EngineActor).remote(_tiny_cfg())
    params = SamplingParams(max_tokens=6, logprobs=3, prompt_logprobs=2)
    text_prompt = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    outs = ray_local.get(actor.generate.remote([text_prompt, [5, 6, 7, 8, 9]], params.to_dict()))
    assert len(outs) == 2
    for out in outs:
        assert out["error"] is None
        comp = out["completions"][0]
        assert len(comp["token_ids"]) == len(comp["logprobs"]) <= 6
        for tok, top in zip(comp["token_ids"], comp["logprobs"]):
            assert tok in top and 3 <= len(top) <= 4          # top-3 plus the sampled token
            assert all(v <= 0 for v in top.values())
            assert top[tok] == pytest.approx(max(top.values()), abs=1e-4)  # greedy picks the argmax
        plp = out["prompt_logprobs"]
        assert plp[0] is None and len(plp) == len(out["prompt_token_ids"])
        for tok, top in zip(out["prompt_token_ids"][1:], plp[1:]):
            assert tok in top                                   # the actual token is always scored
    assert outs[1]["prompt_token_ids"] == [5, 6, 7, 8, 9]

    # Teacher forcing: prompt_logprobs of prompt+completion reproduce the completion's logprobs.
    first = outs[1]
    forced = ray_local.get(actor.generate.remote(
        [first["prompt_token_ids"] + first["completions"][0]["token_ids"]],
        SamplingParams(max_tokens=1, prompt_logprobs=0).to_dict()))[0]["prompt_logprobs"]
    for k, tok in enumerate(first["completions"][0]["token_ids"]):
        assert forced[5 + k][tok] == pytest.approx(first["completions"][0]["logprobs"][k][tok], abs=2e-3)

    # prompt_logprobs_from: the head comes from the prefix cache, the tail equals a full pass
    # (also when the whole prompt is cached already: asked twice).
    long = [5 + (7 * i) % 300 for i in range(300)]
    full = ray_local.get(actor.generate.remote([long], SamplingParams(max_tokens=1, prompt_logprobs=3).to_dict()))
    for _ in range(2):
        tail = ray_local.get(actor.generate.remote([long], SamplingParams(
            max_tokens=1, prompt_logprobs=3, prompt_logprobs_from=250).to_dict()))
        assert tail[0]["error"] is None and tail[0]["prompt_logprobs"][:250] == [None] * 250
        for want, got in zip(full[0]["prompt_logprobs"][250:], tail[0]["prompt_logprobs"][250:], strict=True):
            assert want.keys() == got.keys() and all(abs(want[k] - got[k]) < 1e-4 for k in want)

    # A bad prompt is an error on that prompt only.
    outs = ray_local.get(actor.generate.remote([[1] * 600, [5, 6]], SamplingParams(max_tokens=4).to_dict()))
    assert "exceeds max_model_len" in outs[0]["error"] and outs[1]["error"] is None
    ray_local.kill(actor)


def test_ray_data_actor_pool(tiny_model, ray_local):
    from ttpa_ray.engines.actors import GenerateBatch, engine_memory, engine_pool_kwargs

    ds = ray_local.data.from_items([{"id": i, "prompt_token_ids": [5 + i, 6, 7]} for i in range(6)]
                                   + [{"id": 6, "prompt_token_ids": [1] * 600}])
    pool = PoolConfig(min_actors=1, max_actors=2, num_cpus=0.5, batch_size=2)
    cfg = EngineConfig.model_validate(_tiny_cfg(pool=pool.model_dump()))
    rows = ds.map_batches(GenerateBatch, fn_constructor_kwargs={
        "engine": cfg.model_dump(), "params": {"max_tokens": 4}}, **engine_pool_kwargs(cfg)).take_all()
    # Every actor of the pool asked Ray for the memory derived from the model (resources.py).
    requested = actor_resources("GenerateBatch")
    assert requested and all(r["memory"] == engine_memory(cfg) and r["CPU"] == 0.5 for r in requested.values())
    assert engine_memory(cfg) > 2**30  # the vLLM runtime + the 1 GiB KV cache, not 0
    assert sorted(r["id"] for r in rows) == list(range(7))          # nothing lost
    bad = [r for r in rows if r["error"]]
    assert [r["id"] for r in bad] == [6] and "max_model_len" in bad[0]["error"]
    assert all(len(r["completions"][0]["token_ids"]) == 4 for r in rows if not r["error"])


def test_json_schema_constrained_decoding_vllm(smollm2, ray_local):
    from ttpa_ray.engines.actors import EngineActor

    cfg = EngineConfig(backend="vllm", model="smollm2-135m-instruct", dtype="float32", max_model_len=1024).model_dump()
    actor = ray_local.remote(num_cpus=1)(EngineActor).remote(cfg)
    asks = ["Weather in Paris for 3 days, celsius.", "Forecast for Tokyo, two days, in fahrenheit.",
            "Give me Berlin's weather for a week.", "Oslo, 5 days."]
    prompts = [ray_local.get(actor.render.remote([{"role": "user", "content": a + " Answer as JSON."}])) for a in asks]
    outs = ray_local.get(actor.generate.remote(
        prompts, SamplingParams(max_tokens=64, temperature=0.8, seed=3, json_schema=SCHEMA).to_dict()))
    ray_local.kill(actor)
    for out in outs:
        jsonschema.validate(json.loads(out["completions"][0]["text"]), SCHEMA)


def test_json_schema_constrained_decoding_transformers(smollm2):
    from ttpa_ray.engines.hf import HFEngine

    eng = HFEngine(str(smollm2), dtype="bfloat16")
    prompt = eng.apply_chat_template([{"role": "user", "content": "Weather in Rome for 4 days as JSON."}])
    outs = eng.generate([prompt, prompt], SamplingParams(max_tokens=64, temperature=1.0, seed=1, json_schema=SCHEMA))
    for out in outs:
        jsonschema.validate(json.loads(out.completions[0].text), SCHEMA)


def test_transformers_prompt_logprobs_from_equals_full_pass(tiny_model):
    from ttpa_ray.engines.hf import HFEngine

    eng = HFEngine(str(tiny_model), dtype="float32")
    ids = [5 + (11 * i) % 200 for i in range(40)]
    full = eng.generate([ids], SamplingParams(max_tokens=0, prompt_logprobs=2))[0].prompt_logprobs
    tail = eng.generate([ids], SamplingParams(max_tokens=0, prompt_logprobs=2, prompt_logprobs_from=30))[0]
    assert tail.prompt_logprobs[:30] == [None] * 30 and len(tail.prompt_logprobs) == 40
    for want, got in zip(full[30:], tail.prompt_logprobs[30:]):
        assert want.keys() == got.keys() and all(abs(want[k] - got[k]) < 1e-5 for k in want)


@pytest.fixture(scope="module")
def http_server(tiny_model):
    proc = subprocess.Popen([sys.executable, "-m", "ttpa_ray.cli", "serve", "tiny-random", "--backend",
                             "transformers", "--dtype", "float32", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 180
    url = None
    while time.time() < deadline and url is None:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        if m := re.search(r"on (http://127\.0\.0\.1:\d+/v1)", line):
            url = m.group(1)
    assert url, "ttpa serve did not start"
    yield url
    proc.terminate()
    proc.wait(30)


def test_openai_backend_against_local_http_server(http_server, tiny_model, monkeypatch):
    from ttpa_ray.engines.build import build_engine
    from ttpa_ray.engines.hf import HFEngine

    monkeypatch.setenv("TTPA_TEST_KEY", "secret-not-logged")
    remote = build_engine(EngineConfig(backend="openai", model="tiny-random", api_base=http_server,
                                       api_key_env="TTPA_TEST_KEY", tokenizer="tiny-random"))
    local = HFEngine(str(tiny_model), dtype="float32")
    prompt = remote.apply_chat_template([{"role": "user", "content": "hi"}])
    params = SamplingParams(max_tokens=8, logprobs=2, prompt_logprobs=1)
    got = remote.generate([prompt, [5, 6, 7]], params)
    want = local.generate([prompt, [5, 6, 7]], params)
    for g, w in zip(got, want):
        assert g.error is None
        assert g.prompt_token_ids == w.prompt_token_ids
        assert g.completions[0].token_ids == w.completions[0].token_ids      # ids survive the wire exactly
        for a, b in zip(g.completions[0].logprobs, w.completions[0].logprobs):
            assert a.keys() == b.keys() and all(math.isclose(a[k], b[k], abs_tol=1e-4) for k in a)
        assert len(g.prompt_logprobs) == len(w.prompt_logprobs)
    chat = remote.chat([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=4))
    assert chat[0].error is None and chat[0].completions[0].text == want[0].completions[0].text[: len(
        chat[0].completions[0].text)]
    # A failing request (prompt longer than the server allows) is an error row, not an exception.
    bad = remote.generate([[5] * 5000], SamplingParams(max_tokens=4))
    assert bad[0].error and "HTTP 400" in bad[0].error


def test_openai_backend_missing_key_env_is_clear(monkeypatch):
    from ttpa_ray.engines.build import build_engine

    monkeypatch.delenv("TTPA_NO_SUCH_KEY", raising=False)
    with pytest.raises(RuntimeError, match="TTPA_NO_SUCH_KEY, but that environment variable is not set"):
        build_engine(EngineConfig(backend="openai", model="m", api_base="http://127.0.0.1:9/v1",
                                  api_key_env="TTPA_NO_SUCH_KEY"))
