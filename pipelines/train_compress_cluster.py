"""train-compress-cluster: the default pipeline as it runs on a Kubeflow cluster.

Same steps and parameters as train-compress (training on the heavy profile, caching off for it), plus:
- ``distributed_training``: train with the train-distributed step instead (a TrainJob/PyTorchJob of ``nodes`` x
  ``procs_per_node`` on the heavy profile, launched by a light step that mounts ``checkpoint_pvc``);
- ``serving_image``: build and push the serving image in the cluster from the packaged Bento context (Kaniko or
  BuildKit Job over a PVC that lives only as long as the build);
- ``promote`` (with a serving image): commit that image's serving values for ``promote_tenant``/``promote_env`` to
  the GitOps repository and push, the gate's evidence in the message.
"""

from collections.abc import Callable

from kfp import dsl, kubernetes

from kubeforge.config import DistributedConfig
from kubeforge.deploy.gitops import CREDENTIALS_SECRET, SECRET_KEY_TO_ENV
from kubeforge_components.build_image import CONTEXT_MOUNT, NODE_NAME_ENV, build_image
from kubeforge_components.preprocess import preprocess
from kubeforge_components.promote import promote as promote_release
from kubeforge_components.train import train
from kubeforge_components.train_distributed import train_distributed
from kubeforge_pipelines.params import Params, derived_pipeline, section_args
from kubeforge_pipelines.scheduling import Placement
from kubeforge_pipelines.train_compress import evaluate_compress_report

NAME = "train-compress-cluster"
DESCRIPTION = ("train-compress on a Kubeflow cluster: GPU training, compression behind the accuracy gate, "
               "and an in-cluster build of the serving image.")
SECTIONS = ("data", "model", "train", "compress", "cluster", "distributed")
# KFP mounts volumes at compile-time paths, so the checkpoint PVC's mount path is not a run parameter
FIXED = ("checkpoint_mount",)
VOLUME = ("storage_class", "workspace_size")  # settings of the CreatePVC steps only
CHECKPOINT_MOUNT = DistributedConfig().checkpoint_mount
CLUSTER_ONLY = ("kfp.local cannot pass a dsl.OneOf artifact out of the training branches; "
                "run train-compress locally (the same steps)")
TRAINING_TASKS = ("train",)


def build(placement: Placement) -> Callable:
    def body(p: Params):
        data = preprocess(**section_args(p, "data"))
        data.set_display_name("preprocess")
        placement.step(data)
        training = dict(splits=data.outputs["splits"], **section_args(p, "model", "train"))
        with dsl.If(p["distributed_training"] == True, name="distributed-training"):  # noqa: E712 (a KFP condition)
            launched = train_distributed(
                **training, **section_args(p, "distributed", exclude=FIXED + VOLUME),
                checkpoint_mount=CHECKPOINT_MOUNT,
                training_profile=placement.heavy.name, training_image=placement.image)
            launched.set_display_name("train-distributed")
            launched.set_caching_options(placement.cache_training)
            placement.step(launched)  # it only launches and waits; the job's pods get the heavy profile
            kubernetes.mount_pvc(launched, pvc_name=p["checkpoint_pvc"], mount_path=CHECKPOINT_MOUNT)
        with dsl.Else(name="single-pod-training"):
            trained = train(**training)
            trained.set_display_name("train")
            placement.training(trained)
        model_artifact = dsl.OneOf(launched.outputs["trained_model"], trained.outputs["trained_model"])
        compressed, packaged, summary = evaluate_compress_report(placement, p, data.outputs["splits"], model_artifact)

        with dsl.If(p["serving_image"] != "", name="serving-image-requested"):
            context = kubernetes.CreatePVC(pvc_name_suffix="-bento-context", access_modes=["ReadWriteOnce"],
                                           size=p["build_context_size"], storage_class_name=p["storage_class"])
            context.set_display_name("create-build-context-volume")
            built = build_image(build_context=packaged.outputs["build_context"], image=p["serving_image"],
                                builder=p["image_builder"], registry_secret=p["registry_secret"],
                                context_pvc=context.outputs["name"], timeout_s=p["build_timeout_s"])
            built.set_display_name("build-image")
            built.set_caching_options(False)  # a push is a side effect: always run it
            placement.step(built)
            kubernetes.mount_pvc(built, pvc_name=context.outputs["name"], mount_path=CONTEXT_MOUNT)
            kubernetes.use_field_path_as_env(built, env_name=NODE_NAME_ENV, field_path="spec.nodeName")
            cleanup = kubernetes.DeletePVC(pvc_name=context.outputs["name"]).after(built)
            cleanup.set_display_name("delete-build-context-volume")

            with dsl.If(p["promote"] == True, name="promotion-requested"):  # noqa: E712 (a KFP condition)
                promoted = promote_release(
                    compressed_model=compressed.outputs["compressed_model"],
                    compression_json=compressed.outputs["compression_json"], tenant=p["promote_tenant"],
                    env=p["promote_env"], image=built.outputs["Output"], profile=p["serving_profile"],
                    repo_url=p["gitops_repo_url"], branch=p["gitops_branch"],
                    run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, app=p["serving_app"], pipeline_name=NAME)
                promoted.set_display_name("promote")
                promoted.set_caching_options(False)  # a cached promotion would push nothing
                placement.step(promoted)
                kubernetes.use_secret_as_env(promoted, secret_name=CREDENTIALS_SECRET,
                                             secret_key_to_env=SECRET_KEY_TO_ENV)
        return summary.outputs["run_report"]

    return derived_pipeline(NAME, DESCRIPTION, SECTIONS, body, fixed=FIXED)
