"""build-image: build and push the serving image inside the cluster from the packaged Bento context.

The pipeline mounts a fresh PVC at CONTEXT_MOUNT; this step copies the context onto it and runs the Kaniko/BuildKit
Job rendered by kubeforge.serving.image_job over that PVC, pinned to this pod's node (so a ReadWriteOnce volume
works), then waits for the Job and fails with the builder's log tail if it fails.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from kubeforge_components import RUNTIME_IMAGE

CONTEXT_MOUNT = "/kubeforge-context"
NODE_NAME_ENV = "NODE_NAME"


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def build_image(
    build_context: Input[Artifact],
    image: str,
    builder: str,
    registry_secret: str,
    context_pvc: str,
    timeout_s: int,
    build_report: Output[Markdown],
) -> str:
    """Returns the pushed image reference, for the promote step."""
    import os
    import shutil
    import time
    import uuid
    from pathlib import Path

    from kubernetes import client, config

    from kubeforge.artifacts import label
    from kubeforge.serving.image_job import render_image_job
    from kubeforge_components.build_image import CONTEXT_MOUNT, NODE_NAME_ENV

    config.load_incluster_config()
    namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
    job_name = f"kubeforge-image-build-{uuid.uuid4().hex[:10]}"
    shutil.copytree(build_context.path, f"{CONTEXT_MOUNT}/{job_name}")
    job = render_image_job(image, namespace=namespace, name=job_name, builder=builder, context_pvc=context_pvc,
                           context_subpath=job_name, registry_secret=registry_secret)
    job["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": os.environ[NODE_NAME_ENV]}
    batch, core = client.BatchV1Api(), client.CoreV1Api()
    batch.create_namespaced_job(namespace, job)
    deadline = time.monotonic() + timeout_s
    while True:
        status = batch.read_namespaced_job_status(job_name, namespace).status
        if status.succeeded:
            break
        failed = next((c for c in status.conditions or [] if c.type == "Failed" and c.status == "True"), None)
        if failed or time.monotonic() > deadline:
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
            logs = core.read_namespaced_pod_log(pods[-1].metadata.name, namespace, tail_lines=20) if pods else ""
            reason = failed.message if failed else f"not finished after {timeout_s} s"
            batch.delete_namespaced_job(job_name, namespace, propagation_policy="Background")
            raise RuntimeError(f"image build Job {namespace}/{job_name} failed: {reason}\n{logs}")
        time.sleep(5)
    Path(build_report.path).write_text(f"# Serving image\n\nBuilt and pushed `{image}` with {builder} "
                                       f"(Job `{namespace}/{job_name}`).\n")
    label(build_report, "Image build")
    return image
