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
    import uuid
    from pathlib import Path

    from kubeforge.artifacts import label
    from kubeforge.distributed.launcher import connect, current_namespace
    from kubeforge.serving.image_build import run_image_job
    from kubeforge.serving.image_job import render_image_job
    from kubeforge_components.build_image import CONTEXT_MOUNT, NODE_NAME_ENV

    namespace = current_namespace()
    job_name = f"kubeforge-image-build-{uuid.uuid4().hex[:10]}"
    shutil.copytree(build_context.path, f"{CONTEXT_MOUNT}/{job_name}")
    job = render_image_job(image, namespace=namespace, name=job_name, builder=builder, context_pvc=context_pvc,
                           context_subpath=job_name, registry_secret=registry_secret)
    job["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": os.environ[NODE_NAME_ENV]}
    run_image_job(job, api_client=connect(), timeout_s=timeout_s)
    Path(build_report.path).write_text(f"# Serving image\n\nBuilt and pushed `{image}` with {builder} "
                                       f"(Job `{namespace}/{job_name}`).\n")
    label(build_report, "Image build")
    return image
