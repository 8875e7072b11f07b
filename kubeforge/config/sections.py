"""The classifier path's step sections, and the serving, cluster and distributed-training sections they share with
language models."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.config.base import (DNS_LABEL_PATTERN, IMAGE_REFERENCE, EnvSection, _Section,
                                   check_method_chains)

BUNDLED_DATASETS = ("digits", "breast_cancer", "wine", "iris")


class DataConfig(_Section):
    """Where the data comes from and how it is split."""

    dataset: str = Field("digits", description="a bundled scikit-learn set name or a CSV/Parquet path or fsspec URI")
    label_column: str = Field("", description="label column of a CSV/Parquet source ('' for bundled sets)")
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5, description="share of rows held out for validation")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="share of rows held out for the final test")
    split_seed: int = Field(0, ge=0, description="seed of the stratified split")

    @field_validator("dataset")
    @classmethod
    def _dataset_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("dataset must name a bundled set or a file")
        return value.strip()

    @model_validator(mode="after")
    def _file_sources_need_a_label(self) -> DataConfig:
        if self.dataset not in BUNDLED_DATASETS and not self.label_column:
            raise ValueError(f"label_column is required when dataset is a file ({self.dataset!r})")
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("val_fraction + test_fraction must leave at least 20% of rows for training")
        return self


class ModelConfig(_Section):
    """Which architecture to build; the config is saved next to the weights."""

    model: str = Field("mlp", description="'mlp', 'cnn' or a 'package.module:Class' import path")
    hidden_sizes: list[int] = Field(default_factory=lambda: [256, 128], description="MLP hidden layer widths")
    channels: list[int] = Field(default_factory=lambda: [16, 32], description="CNN conv channels per block")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout probability")

    @field_validator("hidden_sizes", "channels")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        if not value or any(width <= 0 for width in value):
            raise ValueError("must be a non-empty list of positive integers")
        return value

    @field_validator("model")
    @classmethod
    def _known_model_form(cls, value: str) -> str:
        if value in ("mlp", "cnn"):
            return value
        module, sep, attr = value.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"unknown model {value!r}: use 'mlp', 'cnn' or 'package.module:Class'")
        return value


class TrainConfig(_Section):
    """Optimisation settings of one training run."""

    epochs: int = Field(40, ge=1, le=10_000, description="maximum number of epochs")
    learning_rate: float = Field(3e-3, gt=0.0, le=10.0, description="AdamW peak learning rate (cosine decay)")
    batch_size: int = Field(64, ge=1, le=65_536, description="mini-batch size")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay")
    patience: int = Field(8, ge=1, description="epochs without validation-loss improvement before stopping")
    seed: int = Field(0, ge=0, description="seed of initialisation, shuffling and dropout")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA when present")
    mixed_precision: bool = Field(True, description="bf16 autocast; applied on CUDA only")
    warm_start: str = Field("", description="model directory of an earlier run to fine-tune from ('' = none)")


COMPRESSION_METHODS = ("int8-dynamic", "onnx-int8", "prune-structured", "prune-unstructured", "distill", "fp16", "bf16")


class CompressConfig(_Section):
    """Which compressed candidates to try and the gate a candidate must pass to be chosen."""

    compress_methods: list[str] = Field(
        default_factory=lambda: ["onnx-int8", "int8-dynamic", "prune-structured", "distill+onnx-int8"],
        description="candidates to evaluate; '+' chains methods, e.g. 'distill+onnx-int8'")
    max_accuracy_drop: float = Field(1.0, ge=0.0, le=100.0, description="largest allowed test-accuracy drop, points")
    objective: Literal["latency", "size"] = Field("latency", description="what the best passing candidate minimises")
    prune_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="share of hidden units/channels removed")
    target_sparsity: float = Field(0.8, gt=0.0, lt=1.0, description="weight sparsity of unstructured pruning")
    finetune_epochs: int = Field(5, ge=0, le=1000, description="fine-tuning epochs after pruning")
    student_hidden_sizes: list[int] = Field(default_factory=lambda: [64], description="distilled student's widths")
    distill_epochs: int = Field(30, ge=1, le=10_000, description="student training epochs")
    distill_temperature: float = Field(3.0, gt=0.0, le=100.0, description="softmax temperature T")
    distill_alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard-label CE term")
    calibration_batches: int = Field(8, ge=1, le=10_000, description="train batches for static int8 calibration")
    bench_runs: int = Field(100, ge=100, le=100_000, description="timed inferences per latency measurement")
    bench_threads: int = Field(1, ge=1, le=256, description="intra-op threads while measuring latency")

    @field_validator("compress_methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        return check_method_chains(value, COMPRESSION_METHODS, "compression method")

    @field_validator("student_hidden_sizes")
    @classmethod
    def _positive_student_widths(cls, value: list[int]) -> list[int]:
        if not value or any(width <= 0 for width in value):
            raise ValueError("must be a non-empty list of positive integers")
        return value


class ClusterConfig(_Section):
    """Steps that exist only on a Kubeflow cluster: the in-cluster serving-image build and the optional promotion."""

    serving_image: str = Field("", description="serving image the in-cluster build pushes ('' = skip the build)")
    image_builder: Literal["kaniko", "buildkit"] = Field("kaniko", description="in-cluster image builder")
    registry_secret: str = Field("registry-credentials", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                 description="dockerconfigjson Secret the image build pushes with")
    build_context_size: str = Field("2Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Mi|Gi|Ti)$",
                                    description="size of the PVC that carries the Bento context to the builder")
    build_timeout_s: int = Field(3600, ge=60, le=86_400, description="how long the build step waits for its Job")
    distributed_training: bool = Field(False, description="train with the distributed-training job (needs "
                                                          "checkpoint_pvc) instead of in one pod")
    promote: bool = Field(False, description="after the image build, commit the serving values to the GitOps repo "
                                             "and push (needs serving_image, promote_tenant, gitops_repo_url)")
    promote_tenant: str = Field("", pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length=63,
                                description="tenant whose apps/<tenant>/<env>/<app> values the promotion writes")
    promote_env: str = Field("dev", pattern=DNS_LABEL_PATTERN, description="environment, e.g. prod")
    serving_app: str = Field("classifier", pattern=DNS_LABEL_PATTERN,
                             description="application name under apps/<tenant>/")
    serving_profile: str = Field("", description="scheduling profile of the served model ('' = platform default)")
    gitops_repo_url: str = Field("", description="HTTPS URL of the GitOps repository the promotion pushes to")
    gitops_branch: str = Field("main", min_length=1, description="branch the promotion commits to")

    @field_validator("serving_image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if value and not IMAGE_REFERENCE.match(value):
            raise ValueError(f"{value!r} is not an image reference (registry/repository:tag or @sha256:<64 hex>)")
        return value

    @model_validator(mode="after")
    def _promotion_is_complete(self) -> ClusterConfig:
        missing = [name for name in ("serving_image", "promote_tenant", "gitops_repo_url") if not getattr(self, name)]
        if self.promote and missing:
            raise ValueError(f"promote=true needs {', '.join(missing)} (the image it promotes, the tenant, the repo)")
        return self


class ServeConfig(EnvSection):
    """How the BentoML service runs; the Helm chart passes these through as environment variables.

    Admission (kubeforge.serving.admission): at most ``max_concurrency`` requests in flight per pod (fixed), or a
    limit that adapts between ``min_concurrency`` and ``max_concurrency`` to keep requests within
    ``latency_target_ms`` (adaptive); up to ``max_queue`` more wait for a slot; the rest get 503 with
    ``Retry-After: retry_after_s`` before their body is read, except that while refused clients come straight back
    (one in 64 is still refused, to check) a request without a slot waits for one instead (parked, at no CPU, until
    its deadline). Pod-wide
    counts are split evenly across workers.
    """

    workers: int = Field(1, ge=1, le=64, description="server worker processes")
    threads: int = Field(1, ge=1, le=64, description="intra-op threads per worker for inference")
    max_batch_size: int = Field(64, ge=1, le=4096, description="adaptive batching: largest merged batch")
    max_latency_ms: int = Field(50, ge=1, le=60_000,
                                description="deadline: a request whose inference has not started this long after "
                                            "it was received gets 503 before inference")
    max_concurrency: int = Field(256, ge=1, le=100_000,
                                 description="admission: in-flight requests per pod (the fixed limit, or the "
                                             "adaptive limit's ceiling)")
    limit_mode: Literal["adaptive", "fixed"] = Field(
        "adaptive", description="admission: 'adaptive' follows latency_target_ms, 'fixed' is max_concurrency")
    min_concurrency: int = Field(8, ge=1, le=100_000, description="admission: the adaptive limit's floor per pod")
    latency_target_ms: float = Field(25.0, gt=0, le=60_000,
                                     description="admission: latency the adaptive limit keeps admitted requests "
                                                 "within (fractions allowed: size it from a median measured on the "
                                                 "node type that serves)")
    max_queue: int = Field(0, ge=0, le=100_000, description="admission: requests per pod that may wait for a slot")
    retry_after_s: int = Field(1, ge=0, le=3600, description="admission: Retry-After of a 503")
    timeout_s: float = Field(10.0, gt=0.0, le=3600.0, description="request timeout")
    max_instances: int = Field(1024, ge=1, le=1_000_000, description="rows per request")
    max_payload_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest accepted request body")
    model_name: str = Field("kubeforge-classifier", pattern=DNS_LABEL_PATTERN, max_length=63,
                            description="the model's name in the Open Inference Protocol v2 routes")
    fast_path: bool = Field(True, description="answer plain POST /predict and v2 infer requests inside the HTTP "
                                              "protocol (httptools), not through ASGI: same rules, less CPU each")

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> ServeConfig:
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(f"min_concurrency ({self.min_concurrency}) is above max_concurrency "
                             f"({self.max_concurrency})")
        return self

    ENV_PREFIX: ClassVar[str] = "KUBEFORGE_SERVE_"
    ENV_LABEL: ClassVar[str] = "serving environment"


class DistributedConfig(_Section):
    """Training on N nodes x M processes as a Kubeflow Trainer TrainJob (or a PyTorchJob on older clusters).

    Checkpoints live on a shared PVC so a preempted or restarted job resumes; with more than one node it must be
    ReadWriteMany, because every rank reads the checkpoint when it resumes.
    """

    nodes: int = Field(1, ge=1, le=1024, description="training pods (nodes)")
    procs_per_node: int = Field(1, ge=1, le=64,
                                description="torchrun processes per node; one GPU each on a GPU profile")
    dist_backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="'auto': nccl on CUDA, gloo on CPU")
    job_kind: Literal["trainjob", "pytorchjob"] = Field(
        "trainjob", description="'trainjob' (trainer.kubeflow.org/v1alpha1) or 'pytorchjob' (kubeflow.org/v1)")
    checkpoint_pvc: str = Field("", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
                                description="PVC shared by the job's pods and the launching step ('' = none)")
    checkpoint_mount: str = Field("/mnt/kubeforge", pattern=r"^/", description="where the PVC is mounted in pods")
    max_restarts: int = Field(3, ge=0, le=100, description="whole-job restarts (preemption, node loss) before failing")
    job_timeout_s: int = Field(24 * 3600, ge=10, description="how long the launcher waits for the job to finish")
    storage_class: str = Field("", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
                               description="StorageClass of the volumes the cluster pipelines create; KFP's "
                                           "CreatePVC sends it as given, and '' binds only a pre-made volume")
    workspace_size: str = Field("50Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Mi|Gi|Ti)$",
                                description="size of the volume lm-finetune-cluster fetches the model and data into")
