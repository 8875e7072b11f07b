"""lm-finetune-cluster: lm-finetune as it runs on a Kubeflow cluster, across nodes.

    create-workspace-volume (CreatePVC) -> lm-fetch (data + base model onto it, with the one resolver)
    -> lm-train-distributed (a TrainJob/PyTorchJob of nodes x procs_per_node on the heavy profile, FSDP2 by default,
       launched by a light step; the model comes back as its artifact) -> lm-evaluate (base vs fine-tuned, the base
       read from the volume) -> report; delete-workspace-volume (DeletePVC) after lm-evaluate.

The volume is made and removed by the pipeline, never by hand. A failed run leaves it in place with the data, the
base model and the checkpoint, for inspection (delete it with kubectl when done).
"""

from collections.abc import Callable

from kfp import kubernetes

from kubeforge.config import DistributedConfig
from kubeforge_components.lm_evaluate import lm_evaluate
from kubeforge_components.lm_fetch import lm_fetch
from kubeforge_components.lm_report import lm_report
from kubeforge_components.lm_train_distributed import lm_train_distributed
from kubeforge_pipelines.params import Params, derived_pipeline, section_args
from kubeforge_pipelines.scheduling import Placement

NAME = "lm-finetune-cluster"
DESCRIPTION = ("Fine-tune a causal LM across nodes (FSDP2 or DDP) as a Kubeflow Trainer TrainJob or a PyTorchJob, "
               "from a volume the pipeline creates, fills and deletes; evaluate it against its base.")
SECTIONS = ("lm_data", "lm_model", "finetune", "lora", "lm_runtime", "distributed")
# the pipeline creates the volume (so no checkpoint_pvc to name) and KFP mounts it at a compile-time path
FIXED = ("checkpoint_pvc", "checkpoint_mount")
VOLUME = ("storage_class", "workspace_size")
# every node reads the checkpoint on resume (a list of channels is not a KFP input, so the mode is not a parameter)
WORKSPACE_ACCESS_MODES = ["ReadWriteMany"]  # settings of the CreatePVC step only
WORKSPACE_MOUNT = DistributedConfig().checkpoint_mount
HF_TOKEN_SECRET = "kubeforge-hf-token"  # optional Secret (key `token`) for gated or private hf:// models
CLUSTER_ONLY = ("kfp.local runs no kfp-kubernetes volume and no TrainJob; run lm-finetune locally (the same steps in "
                "one process)")
TRAINING_TASKS: tuple[str, ...] = ()  # the launcher is light; the job's pods take the heavy profile
KIND = "language-model"


def build(placement: Placement) -> Callable:
    def body(p: Params):
        volume = kubernetes.CreatePVC(pvc_name_suffix="-lm-workspace", access_modes=WORKSPACE_ACCESS_MODES,
                                      size=p["workspace_size"], storage_class_name=p["storage_class"])
        volume.set_display_name("create-workspace-volume")
        volume.set_caching_options(False)  # a new volume per run, always
        claim = volume.outputs["name"]

        fetched = lm_fetch(**section_args(p, "lm_model", "lm_data", "lm_runtime"), workspace_mount=WORKSPACE_MOUNT)
        fetched.set_caching_options(False)  # it fills this run's new volume: a cached result would leave it empty
        kubernetes.use_secret_as_env(fetched, secret_name=HF_TOKEN_SECRET, secret_key_to_env={"token": "HF_TOKEN"},
                                     optional=True)
        splits = fetched.outputs["lm_splits"]

        trained = lm_train_distributed(
            **section_args(p, "lm_model", "lm_data", "finetune", "lm_runtime", "lora", "distributed",
                           exclude=FIXED + VOLUME),
            checkpoint_pvc=claim, checkpoint_mount=WORKSPACE_MOUNT, training_profile=placement.heavy.name,
            training_image=placement.image).after(fetched)
        trained.set_caching_options(placement.cache_training)
        tuned = trained.outputs["finetuned_model"]

        scored = lm_evaluate(lm_splits=splits, finetuned_model=tuned,
                             **section_args(p, "lm_model", "lm_data", "lm_runtime", exclude=("base_model",)),
                             base_model=fetched.outputs["Output"])
        summary = lm_report(lm_splits=splits, finetuned_model=tuned, lm_evaluation=scored.outputs["lm_evaluation"])
        cleanup = kubernetes.DeletePVC(pvc_name=claim).after(scored)
        cleanup.set_display_name("delete-workspace-volume")
        cleanup.set_caching_options(False)

        for task, name in ((fetched, "lm-fetch"), (trained, "lm-train-distributed"), (scored, "lm-evaluate"),
                           (summary, "report")):
            task.set_display_name(name)
            placement.step(task)
        for task in (fetched, trained, scored):
            kubernetes.mount_pvc(task, pvc_name=claim, mount_path=WORKSPACE_MOUNT)
        return summary.outputs["run_report"]

    return derived_pipeline(NAME, DESCRIPTION, SECTIONS, body, fixed=FIXED)
