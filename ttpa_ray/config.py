"""Typed job configuration: the section schemas (pydantic), one per stage.

Each pipeline stage receives only its own section (``job.construct``, ``job.score`` ...), never
the whole job. Loading a job file, command-line overrides, variants and the path policy live in
:mod:`ttpa_ray.job`.

Security checks here: secrets never go in a job (``api_key_env`` names a variable; a key-looking
value or credentials in ``api_base`` are refused without repeating the value).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Errors of this type are reported without the offending value (it may be a secret).
SECRET_ERROR = "secret_in_config"
_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")

# json_schema_extra of a field added after runs were made, whose default keeps what the stage did
# before: left out of the stage's fingerprint while it holds that default (manifest._hashed).
ADDED_LATER = {"fingerprint": "omit_default"}


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class PoolConfig(Section):
    """An autoscaling pool of Ray actors (engines or scorers) used by Ray Data stages."""

    min_actors: int = Field(1, ge=1, description="Actors kept alive by the pool.")
    max_actors: int = Field(1, ge=1, description="Upper bound the pool scales up to.")
    num_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs reserved per actor. Leave room for Ray Data's read tasks: on a "
        "2-CPU machine two actors of 1 CPU each deadlock the stage.",
    )
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (= tensor_parallel_size for vLLM).")
    memory_gb: float | None = Field(
        None, gt=0, description="Memory Ray reserves per actor (GiB), used to place actors and scale the "
        "cluster. null: derived from the model size, dtype and KV cache (engines) or a fixed allowance "
        "(scorers); see ttpa_ray/resources.py.")
    batch_size: int = Field(16, ge=1, description="Rows per map_batches call.")
    threads: int | None = Field(
        None, ge=1, description="CPU threads of each actor's math libraries (OMP_NUM_THREADS). Ray's default is "
        "num_cpus; on a small machine give a single engine actor all cores (it may exceed num_cpus).")

    @model_validator(mode="after")
    def _min_le_max(self) -> PoolConfig:
        if self.min_actors > self.max_actors:
            raise ValueError(
                f"min_actors ({self.min_actors}) must be <= max_actors ({self.max_actors})"
            )
        return self


class EngineConfig(Section):
    """A generation engine: which backend, which model, and how many actors serve it."""

    backend: Literal["vllm", "transformers", "openai"] = Field(
        "vllm", description="vllm (CPU or GPU build), transformers, or an OpenAI-compatible HTTP endpoint."
    )
    model: str = Field(
        "smollm2-135m-instruct",
        description="A bundled model name (`ttpa models list`), a local HF folder, or for "
        "backend=openai the model name the server expects.",
    )
    tokenizer: str | None = Field(
        None, description="For backend=openai: a local model name/folder whose tokenizer and chat template render prompts."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on GPUs, float32 on CPUs (bf16 measured slower than fp32 on the CPUs here).")
    max_model_len: int = Field(4096, ge=16)
    seed: int = 0
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel degree inside one actor (GPU).")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    enable_prefix_caching: bool = True
    block_size: int | None = Field(
        None, ge=16, multiple_of=16, description="vLLM KV-cache block (tokens): prefix-cache hits are whole blocks. None: "
        "vLLM's default (16 on GPU, 128 on CPU); TPS branches share prefixes that end anywhere, so smaller "
        "blocks recompute less of them.")
    enforce_eager: bool = Field(True, description="Skip graph compilation: starts in seconds on CPU.")
    kv_cache_gib: float = Field(1.0, gt=0, description="vLLM-CPU KV cache size (VLLM_CPU_KVCACHE_SPACE).")
    api_base: str | None = Field(None, description="backend=openai: base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(
        None, description="backend=openai: NAME of the environment variable holding the API key (never the key)."
    )
    request_timeout_s: float = Field(300.0, gt=0)
    max_concurrency: int = Field(8, ge=1, description="backend=openai: parallel HTTP requests per actor.")
    pool: PoolConfig = PoolConfig()

    model_config = ConfigDict(hide_input_in_errors=True)  # str(ValidationError) never quotes a pasted key

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME_RE.match(v):
            raise PydanticCustomError(SECRET_ERROR, "api_key_env must be the NAME of an environment variable "
                                      "(A-Z, 0-9, _; e.g. OPENAI_API_KEY), never the key itself: export the key "
                                      "and put the variable's name here (the value is not shown)")
        return v

    @field_validator("api_base")
    @classmethod
    def _plain_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        url = urlsplit(v)
        if url.username is not None or url.password is not None or url.query or url.fragment:
            raise PydanticCustomError(SECRET_ERROR, "api_base must be a plain URL without credentials or a "
                                      "query string (scheme://host:port/path); put the key in the environment "
                                      "variable named by api_key_env (the value is not shown)")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("api_base must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
        return v

    @model_validator(mode="after")
    def _backend_fields(self) -> EngineConfig:
        if self.backend == "openai" and not self.api_base:
            raise ValueError("backend=openai needs api_base, e.g. api_base: http://127.0.0.1:8000/v1")
        if self.backend != "openai" and self.api_base:
            raise ValueError(f"api_base is only used by backend=openai; got backend={self.backend}")
        return self


class RayConfig(Section):
    address: str | None = Field(
        None, description="None starts a local Ray, or joins the cluster when RAY_ADDRESS is set (as under "
        "`ray job submit`); 'auto' or 'ray://host:10001' joins that cluster."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (local mode only).")
    include_dashboard: bool = False


class ProbeConfig(Section):
    """Foundation stage: generate tool calls for a few BFCL-style prompts with the target engine."""

    enabled: bool = True
    num_prompts: int = Field(8, ge=1)
    max_tokens: int = Field(96, ge=1)
    logprobs: int = Field(5, ge=0, le=20)


class ESMWeights(Section):
    """Weights of the ESM formula (the released TTPA values by default)."""

    name: float = Field(3.0, ge=0)
    required: float = Field(3.0, ge=0)
    key: float = Field(1.0, ge=0)
    type: float = Field(2.0, ge=0)
    value: float = Field(2.0, ge=0)

    @property
    def total(self) -> float:
        return self.name + self.required + self.key + self.type + self.value

    @model_validator(mode="after")
    def _positive_total(self) -> ESMWeights:
        if self.name + self.required + self.key + self.type + self.value <= 0:
            raise ValueError("at least one ESM weight must be > 0")
        return self


class ScoreConfig(Section):
    """ESM scoring: weights, pair threshold, and the scoring actor pool."""

    weights: ESMWeights = ESMWeights()
    threshold: float = Field(0.8, ge=0, le=1, description="Below it the best candidate is replaced by gold as chosen.")
    chosen_must_be_valid: bool = Field(
        True, description="The best candidate replaces the gold as chosen only when ESM finds no error in it "
        "(and it scores >= threshold). A departure from the released TTPA rule (score >= threshold alone), "
        "under which a call with one wrong value (0.818) is chosen over the gold; false restores that rule.")
    pool: PoolConfig = PoolConfig(min_actors=1, max_actors=2, num_cpus=0.5, batch_size=512)
    execution_check: bool = Field(False, description="Also execute matched predicted and gold calls of tools "
                                                     "that have an implementation and compare their results.")
    catalog: str = Field("bundled", description="Where execution_check finds implementations.")


class ConstructMaxTokens(Section):
    scenario: int = Field(96, ge=8)
    call: int = Field(192, ge=16)
    simulate: int = Field(160, ge=8)
    answer: int = Field(160, ge=8)
    query: int = Field(80, ge=8)


class SandboxSection(Section):
    timeout_s: float = Field(5.0, gt=0, description="Wall-clock limit per tool call.")
    memory_mb: int = Field(512, ge=64, description="Address-space cap of the tool worker process.")


class ConstructFilters(Section):
    min_answer_chars: int = Field(8, ge=0)
    min_query_chars: int = Field(8, ge=0)
    forbid_tool_names: bool = Field(True, description="Drop queries that name a tool (e.g. 'get_weather').")
    forbid_argument_leak: bool = Field(
        False, description="Drop queries that repeat a string argument value verbatim (strict; off by default "
        "because natural queries mention cities, dates ...).")
    require_grounded_query: bool = Field(
        True, description="Drop instances whose conversation does not determine their calls: every argument "
        "value must be readable from the user text so far or an earlier tool result (enum/boolean parameters "
        "may be paraphrased; ttpa_ray/construct/grounding.py). Counted as query_ungrounded.")
    require_request: bool = Field(
        True, description="Drop queries that are not a request (a question, or an ask in the first person or "
        "imperative) but a statement, as small generators write. Counted as query_not_request.")
    forbid_task_talk: bool = Field(
        True, description="Drop generated queries and answers that talk about the writing task (\"Rewrite this "
        "request\", \"The user wants\", \"Here's a possible response\") and queries that state the values but "
        "ask for something else (no content word of the call's seed request). Counted as talks_about_task and "
        "query_off_topic.")
    require_grounded_answer: bool = Field(
        True, description="Drop turns whose final answer states no value of the turn's tool results (echoes of "
        "the query do not count), and no-tool-fits answers that do not decline. Counted as answer_ungrounded.")
    dedupe: bool = True
    drop_truncated: bool = Field(True, description="Drop answers/queries cut by max_tokens (keep them only for "
                                                   "smoke tests with tiny budgets).")


KINDS = ("single", "multiple", "parallel", "parallel_multiple", "irrelevance")


class ConstructMix(Section):
    """Shares of instance kinds (BFCL's categories). single: one call; multiple: calls of
    different tools one after another; parallel: several calls of one tool in one message;
    parallel_multiple: calls of different tools in one message; irrelevance: no offered tool
    fits, the gold is a text answer."""

    single: float = Field(0.3, ge=0)
    multiple: float = Field(0.2, ge=0)
    parallel: float = Field(0.15, ge=0)
    parallel_multiple: float = Field(0.15, ge=0)
    irrelevance: float = Field(0.2, ge=0)

    @model_validator(mode="after")
    def _some(self) -> ConstructMix:
        if sum(self.shares().values()) <= 0:
            raise ValueError("construct.mix: at least one share must be > 0")
        return self

    def shares(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in KINDS}


def _range(v: tuple[int, int], what: str) -> tuple[int, int]:
    if v[0] > v[1]:
        raise ValueError(f"{what}: min {v[0]} > max {v[1]}; write [min, max]")
    return v


class ConstructConfig(Section):
    """Reversed construction: the generator, the catalog, and how instances are drawn."""

    enabled: bool = True
    catalog: str = Field("bundled", description="'bundled' or a path: OpenAI-schema JSON/JSONL, or a ToolBench folder.")
    num_instances: int = Field(16, ge=1)
    mix: ConstructMix = Field(default_factory=lambda: ConstructMix(), description="Shares of instance kinds.")
    distractors: tuple[int, int] = Field((1, 3), description="[min, max] unused tools offered next to the used "
                                         "ones (own domain and others, shuffled), so the model has to select.")
    calls_per_turn: tuple[int, int] = Field((2, 3), description="[min, max] calls of the multi-call kinds "
                                            "(multiple, parallel, parallel_multiple); single has one.")
    turns: int = Field(1, ge=1, le=8, description="User turns per instance: later turns follow up on the earlier "
                                                  "answer with a call of their own.")
    irrelevance_twins: float = Field(0.0, ge=0, le=1, description="Share of the kept call instances that also "
                                     "get an irrelevance twin: the same query with only tools of other domains, "
                                     "answered with the decline (construct/twins.py). No generation; 0 = none.",
                                     json_schema_extra=ADDED_LATER)
    temperature: float = Field(0.7, ge=0)
    grounded: bool = Field(True, description="Build scenarios and calls around known-good example calls of the "
                                             "catalog (construct/steps.py); needed for small generators.")
    query_attempts: int = Field(3, ge=1, description="Query generations per turn until the filters pass: the "
                                "first free, the rest rewriting the template seed.")
    answer_attempts: int = Field(2, ge=0, description="Answer generations per turn until the answer filter "
                                 "passes; 0 = the template answer (a summary of the results, or a decline) "
                                 "without asking the generator (needs templates on).")
    templates: bool | None = Field(None, description="Use query/answer templates as rewrite seeds and as the last "
                                   "resort when no generation passes. null: on, except for backend openai.")
    max_tokens: ConstructMaxTokens = ConstructMaxTokens()
    sandbox: SandboxSection = SandboxSection()
    filters: ConstructFilters = ConstructFilters()
    generator: EngineConfig = EngineConfig(pool=PoolConfig(batch_size=8))

    @model_validator(mode="after")
    def _ranges(self) -> ConstructConfig:
        _range(self.distractors, "distractors")
        _range(self.calls_per_turn, "calls_per_turn")
        if self.distractors[0] < 0 or self.calls_per_turn[0] < 2:
            raise ValueError("distractors start at 0 and calls_per_turn at 2 (it sizes the multi-call kinds)")
        if self.answer_attempts == 0 and not self.use_templates:
            raise ValueError("answer_attempts: 0 means template answers only, but templates are off (backend "
                             "openai, or templates: false): set answer_attempts >= 1 or templates: true")
        if self.filters.forbid_argument_leak and self.filters.require_grounded_query:
            raise ValueError("filters.forbid_argument_leak drops queries that state argument values, which "
                             "require_grounded_query needs: turn one of them off")
        return self

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tools_per_instance" in data:
            raise ValueError("tools_per_instance was replaced by construct.mix (which sets the used tools per "
                             "kind) and construct.distractors: [min, max] (the unused tools offered)")
        return data

    @property
    def use_templates(self) -> bool:
        return self.generator.backend != "openai" if self.templates is None else self.templates


class SampleConfig(Section):
    """Token-level preference sampling on the target model (``target`` section), or on the SFT
    model when the sft stage runs (``from_sft``)."""

    enabled: bool = True
    from_sft: bool = Field(True, description="With sft enabled: branch and complete on the SFT model "
                           "(on-policy pairs); false: on target.model.")
    mode: Literal["tps", "nsample"] = Field("tps", description="tps: branch at single tokens; nsample: n whole "
                                                                "completions per turn (the authors' released code).")
    top_k: int = Field(5, ge=1, le=20, description="Alternatives read per gold token (prompt_logprobs).")
    min_prob: float = Field(0.05, gt=0, lt=1, description="Branch inside a call's decisions (name, keys, values) "
                            "where an alternative has at least this probability. A turn's first token is branched "
                            "whatever its probability (call-or-not: the most probable alternative that flips call "
                            "vs answer).")
    max_branches_per_call: int = Field(4, ge=1)
    max_tokens: int = Field(192, ge=8, description="Completion length of a branch or sample.")
    temperature: float = Field(0.0, ge=0, description="Branch completion: 0 = greedy.")
    n_samples: int = Field(8, ge=2, description="nsample mode: completions per call turn.")
    nsample_temperature: float = Field(1.0, gt=0)
    no_call_samples: int = Field(4, ge=0, description="No-call (irrelevance) gold turns, both modes: whole "
                                 "completions drawn at nsample_temperature; one that calls a tool is a rejected "
                                 "side (ESM: unexpected_call), the gold text always the chosen one. 0 = none.")


class ReferenceConfig(Section):
    """Reference log-probs of every pair, computed once before training (a Ray Data pass over
    an actor pool holding the starting model), so training never holds a reference model."""

    enabled: bool = True
    batch_size: int = Field(4, ge=1, description="Pairs per forward pass.")
    pool: PoolConfig = PoolConfig(num_cpus=0.5, batch_size=16)


class LoraConfig(Section):
    r: int = Field(0, ge=0, description="LoRA rank; 0 trains every weight (full fine-tuning).")
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    merge: bool = Field(True, description="Merge the adapter into the saved model (else save the adapter).")


class TrainerConfig(Section):
    """What ``sft`` and ``train`` share: one Ray Train run of DeepSpeed ZeRO workers, its
    optimiser, schedule, placement, checkpoints and LoRA. A global batch is ``micro_batch_size *
    gradient_accumulation_steps * num_workers`` rows (pairs for ``train``, conversations for
    ``sft``) and its content does not depend on the number of workers (same data order for 1 or N)."""

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    micro_batch_size: int = Field(2, ge=1, description="Rows (pairs or conversations) per worker per forward/backward.")
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5e-6, gt=0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping; 0 = off.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="auto: bf16 on GPUs, fp32 on CPUs.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel ranks).")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0, description="With use_gpu: GPUs of each worker.")
    memory_gb_per_worker: float | None = Field(
        None, gt=0, description="Memory Ray reserves per worker (GiB). null: derived from the model's "
        "parameters, dtype, ZeRO stage and offload (ttpa_ray/resources.py).")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How Ray places the workers' bundles: PACK fills a node first (fast "
        "intra-node collectives), SPREAD puts them on different nodes where it can.")
    threads: int | None = Field(None, ge=1, description="OMP_NUM_THREADS of each worker (CPU runs).")
    gradient_checkpointing: bool = Field(False, description="Recompute each decoder layer's activations in "
                                         "the backward instead of keeping them (HF gradient checkpointing): "
                                         "less memory per rank on long prompts, one more forward of compute.")
    heap_mmap_threshold_kb: int = Field(
        0, ge=0, le=32768, description="CPU memory of each worker (Linux, glibc): host allocations of at least "
        "this many KiB get pages of their own, returned to the system when freed (mallopt M_MMAP_THRESHOLD). "
        "glibc's default threshold (0 here) climbs to 32 MiB as tensors are freed, after which freed activations "
        "stay in the heap. 128 took 0.3-0.5 GB off the demo step's peak RSS and made the step ~1.4x slower "
        "(every large tensor's pages are faulted in afresh; bench/train.py, step case).")
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = Field(False, description="ZeRO-2/3: optimizer states in CPU memory.")
    offload_params: bool = Field(False, description="ZeRO-3: parameters in CPU memory.")
    checkpoint_every: int = Field(50, ge=0, description="Checkpoint every N optimizer steps (0: at the end only).")
    keep_checkpoints: int = Field(2, ge=1)
    storage_path: str | None = Field(
        None, description="Checkpoints and Ray Train state: a local dir or a cloud URI (s3://, gs://) that "
        "every node can reach. None = <run_dir>/<stage>/ray.")
    max_failures: int = Field(0, ge=-1, description="Worker-group restarts from the last checkpoint (-1: unlimited).")
    lora: LoraConfig = LoraConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainerConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage < 1:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.lora.r and self.zero_stage == 3:
            raise ValueError("LoRA with zero_stage 3 is not supported: use zero_stage 2 (adapters are small)")
        return self


class SftConfig(TrainerConfig):
    """Supervised fine-tuning on the constructed conversations that are not held out, the loss
    on assistant tokens only (calls and answers; not the system text, the user turns or the tool
    results). With ``enabled``, ``sample`` branches on the SFT model, which is also the DPO
    reference and ``train``'s start (on-policy TTPA; ``sample.from_sft``/``train.from_sft``
    turn each part off). Output: ``<run_dir>/sft/model`` (an HF folder), ``metrics.jsonl``."""

    enabled: bool = Field(False, description="Run the sft stage between construct and sample.")
    model: str | None = Field(None, description="Model to fine-tune; None = target.model.")
    max_length: int = Field(2048, ge=16, description="Tokens per conversation; longer ones are cut there "
                            "(counted as truncated in the manifest).")
    learning_rate: float = Field(2e-5, gt=0)
    micro_batch_size: int = Field(2, ge=1, description="Conversations per worker per forward/backward.")
    decision_weight: float = Field(1.0, ge=1, description="Weight of the first token of each assistant "
                                   "message (the call-or-answer decision: <tool_call or a text answer's first word) "
                                   "against 1 for the others; the loss is the weighted mean. 1 = TRL's "
                                   "assistant-only loss.")


class TrainConfig(TrainerConfig):
    """DPO-family training on Ray Train with DeepSpeed ZeRO (see :class:`TrainerConfig`)."""

    enabled: bool = True
    model: str | None = Field(None, description="Starting (and reference) model; None = target.model "
                              "(the SFT model when sft runs and from_sft).")
    from_sft: bool = Field(True, description="With sft enabled: start from (and use as reference) the SFT "
                           "model; false: from train.model / target.model.")
    loss_type: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid = DPO (cDPO with "
                                                 "label_smoothing > 0); ipo = IPO on per-token means.")
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    sft_weight: float = Field(0.0, ge=0, description="Adds sft_weight x the mean NLL of the chosen tokens "
                              "(TRL loss_type [sigmoid, sft], RPO): teaches the chosen calls themselves, format "
                              "included, which the pair's shared prefix does not; 0 = pure DPO/IPO.")
    prefix_weight: float = Field(1.0, ge=0, le=1, description="Weight of completion tokens before a pair's "
                                 "divergence token (shared by chosen and rejected); 0 = count only from it on.")
    decision_only: list[Literal["call-or-not", "name", "key", "value", "sample"]] = Field(
        default_factory=list, description="Pairs whose branch kind is listed are scored (in reference and train) "
        "on their divergence token alone, the decision, not on the completion after it. For call-or-not pairs "
        "the rejected side is otherwise a whole call whose closing tokens DPO pushes down with the decision "
        "(README, 'The demo'); the sft_weight NLL of such a pair's chosen side is its divergence token too. "
        "sample: the whole-completion pairs (nsample mode, and the no-call turns' samples, whose rejected side "
        "is a whole call). [] = every completion token counts.")
    binary_decision: bool = Field(False, description="A pair that differs at its first token with one side "
                                  "calling (the sample stage's call_side) scores that token as the binary decision: "
                                  "the text side counts log(1 - p(the call token)), not log p(its first word). Else a "
                                  "rejected 'Here is what I found' in a call turn pushes 'Here' down everywhere, the "
                                  "final answers after tool results included.")
    decision_loss: float = Field(0.0, ge=0, description="Adds decision_loss x the mean over turns of -log p(the "
                                 "chosen side's first token): the call-or-answer decision (<tool_call, or a text "
                                 "answer's first word) taught on every turn, call and no-call alike, with its own "
                                 "weight. DPO on the call turns' pairs raises p(call) on every prompt, irrelevant "
                                 "ones included (README, 'The demo'); this holds the decision where the data put it. "
                                 "Needs packing: turn. 0 = off.")
    decision_balance: bool = Field(True, description="With decision_loss: weight each turn so that every decision "
                                   "(each distinct first chosen token: the call tag's, a text answer's first word) "
                                   "weighs the same in total, mean weight 1. Else the majority decision (calling, in "
                                   "the demo's 11 call and 6 no-call turns) pulls every prompt its way.")
    decision_anchor: float = Field(0.0, ge=0, description="Adds decision_anchor x the mean over turns of the KL "
                                   "divergence from the reference's P(call) to the policy's (P(the call tag's first "
                                   "token) where the completion starts): the decision stays where SFT put it while "
                                   "the pairs teach the calls' content. The level of P(call) otherwise follows the "
                                   "pairs' balance of call and no-call sides, on every prompt (README, 'The demo'). "
                                   "Needs packing: turn and the reference stage's ref_call_first. 0 = off.")
    reject_answers: bool = Field(True, description="Train on the pairs whose chosen side calls and whose rejected "
                                 "side answers in text (the sample stage's call_side 1). false: leave them out "
                                 "(counted as pairs_answer_rejected_dropped): in the demo their rejected text is "
                                 "mostly the abstention that the no-call turns choose (\"I'm sorry, I can't do that "
                                 "here ...\"), and DPO pushes that text down on every prompt, irrelevant ones "
                                 "included (README, 'The demo').")
    pair_weights: Literal["none", "score_margin"] = Field(
        "none", description="score_margin: weight each pair by its ESM score margin (mean weight 1).")
    packing: Literal["turn", "pair"] = Field(
        "turn", description="turn: the pairs of a turn that share its prompt and chosen side are one packed row "
        "[prompt | chosen | rejected_1 | ... | rejected_K] (train/group_forward.py), one forward per turn in "
        "reference and train alike; micro_batch_size then counts turns. pair: one row per pair "
        "(train/pair_forward.py); micro_batch_size counts pairs.")
    attention: Literal["auto", "dense", "flex"] = Field(
        "auto", description="Attention of the packed rows, in reference and train (train/packed_attention.py): "
        "dense = the model's default attention (sdpa) with a dense (rows, 1, L, L) mask; flex = FlexAttention "
        "with a block mask (fused kernels that skip the masked blocks; GPUs only, torch >= 2.6: torch has no "
        "FlexAttention backward on CPUs); auto = flex on GPUs, dense on CPUs. Same log-probs within 1e-5 (tested).")

    @model_validator(mode="after")
    def _flex_on_gpus(self) -> TrainConfig:
        if self.decision_loss and self.packing != "turn":
            raise ValueError("decision_loss needs packing: turn (the turn's chosen side is scored once per packed row); "
                             "set train.packing: turn or train.decision_loss: 0")
        if self.decision_anchor and self.packing != "turn":
            raise ValueError("decision_anchor needs packing: turn (the reference stage scores P(call) per packed turn); "
                             "set train.packing: turn or train.decision_anchor: 0")
        if self.attention == "flex" and not self.use_gpu:
            raise ValueError("attention: flex needs use_gpu: true (torch has no FlexAttention backward on CPUs); "
                             "set attention: auto (dense on CPUs) or dense")
        return self


class EvaluateConfig(Section):
    """Evaluation of one model (the target, or a trained checkpoint) on BFCL's AST categories
    and on a held-out split of the constructed instances (see ``ttpa_ray/evaluate/stage.py``)."""

    enabled: bool = True
    categories: list[Literal["simple", "multiple", "parallel", "parallel_multiple", "irrelevance"]] = Field(
        ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance"],
        description="BFCL v4 categories to run (simple = simple_python); [] skips BFCL.")
    max_per_category: int | None = Field(
        50, ge=1, description="First N entries of each BFCL category (CPU runs); null = all of them.")
    held_out_fraction: float = Field(
        0.2, ge=0, le=1, description="Share of constructed instances held out from sampling and evaluated; "
        "stratified by instance kind, so each kind is held out in proportion; which ones is a deterministic "
        "function of the instances and the job seed.")
    max_tokens: int = Field(256, ge=8, description="Greedy generation budget per assistant turn.")
    batch_size: int | None = Field(
        64, ge=1, description="Rows per engine call (one batched generation) during evaluation; null = the "
        "engine pool's batch_size. Greedy rows are independent, so a larger batch only changes speed "
        "(bench/evaluate.py); the KV cache (engine.kv_cache_gib) bounds how many run at once.")
    pass_rate: bool = Field(True, description="Also play whole episodes on held-out instances whose tools all "
                                              "run in the sandbox (ToolBench-style pass rate).")
    max_steps: int = Field(4, ge=1, le=16, description="Pass rate: model turns per episode before it is failed "
                                                       "(each turn is either tool calls or the final answer).")
    base: bool = Field(True, description="Also evaluate the starting model (the 'before' of the report).")


class ReportConfig(Section):
    """The run report: one self-contained HTML page and Markdown with tables and plots
    (``<run_dir>/report/``, see ``ttpa_ray/report/build.py``); ``ttpa report JOB`` rebuilds it."""

    enabled: bool = True


# `construct` (a stage name) shadows pydantic's deprecated BaseModel.construct alias; harmless.
warnings.filterwarnings("ignore", message='Field name "construct"', category=UserWarning)


VARIANT_SECTIONS = ("sample", "score", "reference", "train")


class JobConfig(Section):
    """A whole job. Stages receive their own section only."""

    name: str = Field(..., min_length=1, description="Job name; also the run folder name.")
    output_dir: str = Field("runs", description="Runs are written to <output_dir>/<name>/.")
    allowed_paths: list[str] = Field(
        [], description="Extra folders the job's local paths (output_dir, model folders, catalogs, "
        "train.storage_path) may point into. Always allowed: the working directory, the TTPA cache dir "
        "(TTPA_CACHE_DIR) and the system temp dir.")
    seed: int = 0
    variants: dict[str, dict[str, Any]] = Field(
        {}, description="Named variants trained from the same constructed instances, e.g. "
        "{tps: {sample.mode: tps}, nsample: {sample.mode: nsample}}: each applies its dotted overrides "
        "(sample, score, reference, train keys only) and runs sample -> train -> evaluate under "
        "<run_dir>/variants/<name>/; the base model is evaluated once and the report shows all side by side.")
    ray: RayConfig = RayConfig()
    target: EngineConfig = Field(EngineConfig(), description="The model being aligned: probed, sampled (TPS), evaluated.")
    probe: ProbeConfig = ProbeConfig()
    construct: ConstructConfig = ConstructConfig()
    sample: SampleConfig = SampleConfig()
    score: ScoreConfig = ScoreConfig()
    sft: SftConfig = SftConfig()
    reference: ReferenceConfig = ReferenceConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("name is also the run folder name: use letters, digits, '.', '_' and '-' "
                             "(no '/', no leading '.'), e.g. name: demo-cpu")
        return v

    @field_validator("variants")
    @classmethod
    def _variant_keys(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in v.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(f"variant {name!r}: use letters, digits, '.', '_' and '-' (it is a folder name)")
            for key in overrides:
                if key.split(".")[0] not in VARIANT_SECTIONS:
                    raise ValueError(f"variant {name}: {key} cannot vary; variants share probe, construct and "
                                     f"evaluate and may set only {', '.join(VARIANT_SECTIONS)} keys, e.g. sample.mode")
        return v

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
