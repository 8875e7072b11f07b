"""The language-model sections of the one config model.

A causal LM goes through the same kinds of step as a classifier (data, model, train, evaluate, compress, serve), so
its settings are sections of the same ``RunConfig`` and reach the CLI, the pipelines and the chart the same way.
Pre-training and fine-tuning share one section class, ``LMTrainConfig``; the run holds it twice, and its flat
parameter names carry the section's prefix (``pretrain_steps``, ``finetune_steps``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.config.base import _Section, check_method_chains

MODEL_SOURCE_HELP = ("local directory, hf://org/name[@revision], s3:// or gs:// (or any fsspec URI), "
                     "pvc://claim/path, or scratch:<preset> (a small Llama built here)")
SCRATCH_PRESETS = ("tiny", "small", "base")  # sizes in kubeforge.lm.sources.SCRATCH_PRESETS


class LMModelConfig(_Section):
    """Which causal LM to start from; a scratch model is built from a transformers config and a tokenizer trained
    on the corpus."""

    base_model: str = Field("scratch:tiny", description=MODEL_SOURCE_HELP)
    tokenizer_vocab: int = Field(2048, ge=256, le=262_144, description="scratch models: byte-level BPE vocabulary")
    context_length: int = Field(256, ge=16, le=131_072, description="scratch models: longest position")

    @field_validator("base_model")
    @classmethod
    def _source_form(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("base_model must name a model source: " + MODEL_SOURCE_HELP)
        if value.startswith("scratch:") and value.removeprefix("scratch:") not in SCRATCH_PRESETS:
            raise ValueError(f"unknown scratch preset {value.removeprefix('scratch:')!r}; "
                             f"known: {', '.join(SCRATCH_PRESETS)}")
        return value


class LMDataConfig(_Section):
    """Pre-training text and the fine-tuning set; the held-out share is split by document, never inside one."""

    corpus: str = Field("pydoc:topics", description="pre-training text: pydoc:topics (ships with Python), or a "
                                                    ".txt/.jsonl/.parquet path or fsspec URI, or hf://datasets/...")
    finetune_dataset: str = Field("pydoc:docstrings", description="fine-tuning set: pydoc:docstrings, or JSONL/"
                                  "Parquet with text, prompt/completion or chat messages (path, URI, hf://datasets/)")
    max_length: int = Field(128, ge=8, le=131_072, description="tokens per training sequence (checked against the "
                                                              "model's context)")
    holdout_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="share of documents held out for evaluation")
    holdout_seed: int = Field(0, ge=0, description="seed of the document split")
    eval_prompts: int = Field(8, ge=0, le=1000, description="held-out prompts whose greedy completions are reported")
    max_new_tokens: int = Field(32, ge=1, le=4096, description="tokens generated per reported completion")

    @field_validator("corpus", "finetune_dataset")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a data source")
        return value.strip()


class LMTrainConfig(_Section):
    """One optimisation run of a causal LM: AdamW, linear warm-up then cosine decay, gradient accumulation."""

    steps: int = Field(200, ge=1, le=10_000_000, description="optimiser steps")
    learning_rate: float = Field(3e-3, gt=0.0, le=1.0, description="AdamW peak learning rate")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps before the cosine decay")
    batch_size: int = Field(16, ge=1, le=65_536, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, le=4096, description="micro-batches per optimiser step")
    patience: int = Field(5, ge=1, description="evaluations without a better validation loss before stopping")

    @model_validator(mode="after")
    def _warmup_inside_run(self) -> LMTrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be smaller than steps ({self.steps})")
        return self


# sized for the local demo: a scratch:tiny model on 2 CPU cores, pre-training + fine-tuning in about two minutes
PRETRAIN_DEFAULTS = LMTrainConfig(steps=150, learning_rate=5e-3, warmup_steps=15, batch_size=16)
FINETUNE_DEFAULTS = LMTrainConfig(steps=100, learning_rate=3e-3, warmup_steps=10, batch_size=16)
# every projection of a Llama block, attention and MLP: adapting all of them is what closes most of the gap to full
# fine-tuning at a given rank (QLoRA paper); q_proj/v_proj alone is peft's minimal default
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LMRuntimeConfig(_Section):
    """How both LM trainings run: device, precision, memory savers, evaluation and checkpoint cadence, parallelism."""

    lm_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA when present")
    lm_mixed_precision: bool = Field(True, description="bf16 autocast; applied on CUDA only (fp32 on CPU)")
    lm_seed: int = Field(0, ge=0, description="seed of initialisation, batch order and dropout")
    lm_weight_decay: float = Field(0.01, ge=0.0, le=1.0, description="AdamW weight decay")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    eval_interval: int = Field(40, ge=1, description="optimiser steps between validation passes")
    checkpoint_interval: int = Field(40, ge=1, description="optimiser steps between resumable checkpoints")
    parallelism: Literal["fsdp", "ddp"] = Field("fsdp", description="under torchrun: FSDP2 (fully_shard) or DDP")
    cpu_threads: int = Field(1, ge=0, le=256, description="intra-op threads when training on CPU (0 = one per "
                             "core); measured here: 1 thread ran a tiny model 5x faster than 2 on shared cores")


class LoRAConfig(_Section):
    """Fine-tuning method: LoRA adapters (peft), QLoRA (CUDA only) or every weight."""

    finetune_method: Literal["lora", "qlora", "full"] = Field("lora", description="lora | qlora (CUDA) | full")
    lora_rank: int = Field(8, ge=1, le=1024, description="LoRA rank r")
    lora_alpha: float = Field(16.0, gt=0.0, le=4096.0, description="LoRA scaling alpha")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    lora_target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_PROJECTIONS),
                                           description="module names that get adapters (checked against the model)")
    merge_adapter: bool = Field(True, description="also write the base model with the adapter merged in")

    @field_validator("lora_target_modules")
    @classmethod
    def _some_targets(cls, value: list[str]) -> list[str]:
        if not value or any(not name.strip() for name in value):
            raise ValueError("must be a non-empty list of module names, e.g. [q_proj, v_proj]")
        return [name.strip() for name in value]


LM_COMPRESSION_METHODS = ("int8-weight", "int4-weight", "onnx", "onnx-int8", "distill", "prune-layers")


class LMCompressConfig(_Section):
    """Compressed candidates of a causal LM and the gate on held-out perplexity and greedy agreement."""

    lm_compress_methods: list[str] = Field(
        default_factory=lambda: ["int8-weight", "onnx-int8", "prune-layers"],
        description="candidates; '+' chains methods, e.g. 'prune-layers+onnx-int8'; known: "
                    + ", ".join(LM_COMPRESSION_METHODS))
    max_perplexity_increase: float = Field(5.0, ge=0.0, le=1000.0,
                                           description="largest allowed held-out perplexity increase, percent")
    min_greedy_agreement: float = Field(0.8, ge=0.0, le=1.0, description="smallest share of the first 32 greedy "
                                        "tokens on held-out prompts that must match the uncompressed model")
    lm_objective: Literal["size", "latency", "throughput"] = Field(
        "latency", description="what the best passing candidate optimises: size on disk, decode latency at batch 1, "
                               "or tokens/s at batch 8")
    student_layers: int = Field(0, ge=0, le=1024, description="distilled student's decoder layers (0 = half)")
    student_hidden_size: int = Field(0, ge=0, le=65_536, description="student's hidden size (0 = the teacher's)")
    lm_distill_steps: int = Field(120, ge=1, le=1_000_000, description="distillation optimiser steps")
    lm_distill_temperature: float = Field(2.0, gt=0.0, le=100.0, description="softmax temperature of the KL term")
    lm_distill_alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the data loss (1 - alpha: KL)")
    prune_layer_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="share of decoder layers removed")
    heal_steps: int = Field(40, ge=0, le=1_000_000, description="fine-tuning steps after layer pruning")
    int4_group_size: int = Field(32, ge=8, le=4096, description="int4 weight-only group size (divides the widths)")
    lm_bench_rounds: int = Field(5, ge=1, le=1000, description="repeated timing rounds per measurement")
    lm_bench_threads: int = Field(1, ge=1, le=256, description="intra-op threads while measuring speed")

    @field_validator("lm_compress_methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        return check_method_chains(value, LM_COMPRESSION_METHODS, "LM compression method")
