"""``tiny-random``: a randomly initialised Qwen2-style model with a locally trained tokenizer.

For tests only: 2 layers, hidden 128, 2 attention heads (head_dim 64, which vLLM's CPU
attention supports), a byte-level BPE tokenizer trained here on a synthetic corpus of chat
and tool-call text, and the project's tool-aware ChatML template. Deterministic: the same
files every time it is built.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<tools>", "</tools>"]
WORDS = (
    "the a weather city temperature unit celsius fahrenheit convert amount currency from to date time "
    "calendar event meeting title start end location search query results limit flight hotel price "
    "book travel stock symbol market value number sum average math expression compute distance route "
    "name arguments function call tool user assistant system please what is how can you get find list "
    "Paris London Tokyo Berlin New York USD EUR JPY today tomorrow morning evening true false null"
).split()


def _corpus(chat_template: str, n_lines: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [chat_template]
    for _ in range(n_lines):
        name = "_".join(rng.sample(WORDS, 2))
        args = {rng.choice(WORDS): rng.choice([rng.choice(WORDS), rng.randint(0, 999), round(rng.random() * 100, 2)])
                for _ in range(rng.randint(1, 3))}
        sentence = " ".join(rng.choices(WORDS, k=rng.randint(4, 12))).capitalize() + rng.choice([".", "?", "!"])
        lines.append(sentence)
        lines.append("<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>")
    return lines


def build(out: Path, chat_template: str) -> dict:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(chat_template), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, additional_special_tokens=[],
    )
    fast.add_tokens(ADDED)
    fast.chat_template = chat_template
    fast.save_pretrained(out)

    vocab = ((len(fast) + 63) // 64) * 64
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        tie_word_embeddings=True, rope_theta=10000.0,
        eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"), bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return {"source": "random init (seed 0) + locally trained BPE", "vocab_size": vocab}
