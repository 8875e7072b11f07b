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

from kubeforge.config import DistributedConfig, RunConfig
from kubeforge.deploy.gitops import CREDENTIALS_SECRET, SECRET_KEY_TO_ENV
from kubeforge_components.build_image import CONTEXT_MOUNT, NODE_NAME_ENV, build_image
from kubeforge_components.compress import compress
from kubeforge_components.evaluate import evaluate
from kubeforge_components.package import package
from kubeforge_components.preprocess import preprocess
from kubeforge_components.promote import promote as promote_release
from kubeforge_components.report import report
from kubeforge_components.train import train
from kubeforge_components.train_distributed import train_distributed
from kubeforge_pipelines.scheduling import Placement

NAME = "train-compress-cluster"
DESCRIPTION = ("train-compress on a Kubeflow cluster: GPU training, compression behind the accuracy gate, "
               "and an in-cluster build of the serving image.")
SECTIONS = ("data", "model", "train", "compress", "cluster", "distributed")
# KFP mounts volumes at compile-time paths, so the checkpoint PVC's mount path is not a run parameter
FIXED = ("checkpoint_mount",)
CHECKPOINT_MOUNT = DistributedConfig().checkpoint_mount
CLUSTER_ONLY = ("kfp.local cannot pass a dsl.OneOf artifact out of the training branches; "
                "run train-compress locally (the same steps)")
D = RunConfig().to_flat(SECTIONS)


def build(placement: Placement) -> Callable:
    @dsl.pipeline(name=NAME, description=DESCRIPTION)
    def train_compress_cluster(
        dataset: str = D["dataset"],
        label_column: str = D["label_column"],
        val_fraction: float = D["val_fraction"],
        test_fraction: float = D["test_fraction"],
        split_seed: int = D["split_seed"],
        model: str = D["model"],
        hidden_sizes: list = D["hidden_sizes"],
        channels: list = D["channels"],
        dropout: float = D["dropout"],
        epochs: int = D["epochs"],
        learning_rate: float = D["learning_rate"],
        batch_size: int = D["batch_size"],
        weight_decay: float = D["weight_decay"],
        patience: int = D["patience"],
        seed: int = D["seed"],
        device: str = D["device"],
        mixed_precision: bool = D["mixed_precision"],
        warm_start: str = D["warm_start"],
        compress_methods: list = D["compress_methods"],
        max_accuracy_drop: float = D["max_accuracy_drop"],
        objective: str = D["objective"],
        prune_fraction: float = D["prune_fraction"],
        target_sparsity: float = D["target_sparsity"],
        finetune_epochs: int = D["finetune_epochs"],
        student_hidden_sizes: list = D["student_hidden_sizes"],
        distill_epochs: int = D["distill_epochs"],
        distill_temperature: float = D["distill_temperature"],
        distill_alpha: float = D["distill_alpha"],
        calibration_batches: int = D["calibration_batches"],
        bench_runs: int = D["bench_runs"],
        bench_threads: int = D["bench_threads"],
        serving_image: str = D["serving_image"],
        image_builder: str = D["image_builder"],
        registry_secret: str = D["registry_secret"],
        build_context_size: str = D["build_context_size"],
        build_timeout_s: int = D["build_timeout_s"],
        distributed_training: bool = D["distributed_training"],
        promote: bool = D["promote"],
        promote_tenant: str = D["promote_tenant"],
        promote_env: str = D["promote_env"],
        serving_app: str = D["serving_app"],
        serving_profile: str = D["serving_profile"],
        gitops_repo_url: str = D["gitops_repo_url"],
        gitops_branch: str = D["gitops_branch"],
        nodes: int = D["nodes"],
        procs_per_node: int = D["procs_per_node"],
        dist_backend: str = D["dist_backend"],
        job_kind: str = D["job_kind"],
        checkpoint_pvc: str = D["checkpoint_pvc"],
        max_restarts: int = D["max_restarts"],
        job_timeout_s: int = D["job_timeout_s"],
    ) -> dsl.HTML:
        data = preprocess(dataset=dataset, label_column=label_column, val_fraction=val_fraction,
                          test_fraction=test_fraction, split_seed=split_seed)
        training = dict(splits=data.outputs["splits"], model=model, hidden_sizes=hidden_sizes, channels=channels,
                        dropout=dropout, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                        weight_decay=weight_decay, patience=patience, seed=seed, device=device,
                        mixed_precision=mixed_precision, warm_start=warm_start)
        with dsl.If(distributed_training == True, name="distributed-training"):  # noqa: E712 (a KFP condition)
            launched = train_distributed(
                **training, nodes=nodes, procs_per_node=procs_per_node, dist_backend=dist_backend,
                job_kind=job_kind, checkpoint_pvc=checkpoint_pvc, checkpoint_mount=CHECKPOINT_MOUNT,
                max_restarts=max_restarts, job_timeout_s=job_timeout_s, training_profile=placement.heavy.name,
                training_image=placement.image)
            launched.set_display_name("train-distributed")
            launched.set_caching_options(placement.cache_training)
            placement.step(launched)  # it only launches and waits; the job's pods get the heavy profile
            kubernetes.mount_pvc(launched, pvc_name=checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
        with dsl.Else(name="single-pod-training"):
            trained = train(**training)
            trained.set_display_name("train")
            placement.training(trained)
        model_artifact = dsl.OneOf(launched.outputs["trained_model"], trained.outputs["trained_model"])
        scored = evaluate(splits=data.outputs["splits"], trained_model=model_artifact, seed=seed)
        compressed = compress(
            splits=data.outputs["splits"], trained_model=model_artifact,
            compress_methods=compress_methods, max_accuracy_drop=max_accuracy_drop, objective=objective,
            prune_fraction=prune_fraction, target_sparsity=target_sparsity, finetune_epochs=finetune_epochs,
            student_hidden_sizes=student_hidden_sizes, distill_epochs=distill_epochs,
            distill_temperature=distill_temperature, distill_alpha=distill_alpha,
            calibration_batches=calibration_batches, bench_runs=bench_runs, bench_threads=bench_threads)
        summary = report(splits=data.outputs["splits"], trained_model=model_artifact,
                         evaluation=scored.outputs["evaluation"],
                         compressed_model=compressed.outputs["compressed_model"])
        packaged = package(model=compressed.outputs["compressed_model"])
        for task, name in ((data, "preprocess"), (scored, "evaluate"), (compressed, "compress"),
                           (packaged, "package"), (summary, "report")):
            task.set_display_name(name)
        for task in (data, scored, compressed, packaged, summary):
            placement.step(task)  # latency is measured on CPU, where the model will be served

        with dsl.If(serving_image != "", name="serving-image-requested"):
            context = kubernetes.CreatePVC(pvc_name_suffix="-bento-context", access_modes=["ReadWriteOnce"],
                                           size=build_context_size)
            context.set_display_name("create-build-context-volume")
            built = build_image(build_context=packaged.outputs["build_context"], image=serving_image,
                                builder=image_builder, registry_secret=registry_secret,
                                context_pvc=context.outputs["name"], timeout_s=build_timeout_s)
            built.set_display_name("build-image")
            built.set_caching_options(False)  # a push is a side effect: always run it
            placement.step(built)
            kubernetes.mount_pvc(built, pvc_name=context.outputs["name"], mount_path=CONTEXT_MOUNT)
            kubernetes.use_field_path_as_env(built, env_name=NODE_NAME_ENV, field_path="spec.nodeName")
            cleanup = kubernetes.DeletePVC(pvc_name=context.outputs["name"]).after(built)
            cleanup.set_display_name("delete-build-context-volume")

            with dsl.If(promote == True, name="promotion-requested"):  # noqa: E712 (a KFP condition)
                promoted = promote_release(
                    compressed_model=compressed.outputs["compressed_model"],
                    compression_json=compressed.outputs["compression_json"], tenant=promote_tenant, env=promote_env,
                    image=built.outputs["Output"], profile=serving_profile, repo_url=gitops_repo_url,
                    branch=gitops_branch, run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, app=serving_app,
                    pipeline_name=NAME)
                promoted.set_display_name("promote")
                promoted.set_caching_options(False)  # a cached promotion would push nothing
                placement.step(promoted)
                kubernetes.use_secret_as_env(promoted, secret_name=CREDENTIALS_SECRET,
                                             secret_key_to_env=SECRET_KEY_TO_ENV)
        return summary.outputs["run_report"]

    return train_compress_cluster
