"""promote: the cluster pipeline's optional last step — commit the gated model's serving values to the GitOps
repository and push, so Argo CD or Flux rolls it out; the commit message carries the evidence.

Wiring (pipelines/): feed it the compress step's ``compressed_model`` and ``compression_json``, pass
``run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER``, and mount the git credentials from a Kubernetes Secret as env::

    from kfp import kubernetes
    from kubeforge.deploy.gitops import CREDENTIALS_SECRET, SECRET_KEY_TO_ENV
    kubernetes.use_secret_as_env(task, secret_name=CREDENTIALS_SECRET, secret_key_to_env=SECRET_KEY_TO_ENV)

The Secret ``kubeforge-gitops-credentials`` holds ``username`` and ``token`` (-> GITOPS_USERNAME, GITOPS_TOKEN: HTTPS
basic auth, e.g. a deploy token with write access to the branch). GITOPS_AUTHOR_NAME / GITOPS_AUTHOR_EMAIL set
the commit author (optional). Set caching off for this task: a cached promotion pushes nothing.

``kserve=True`` releases the model as a KServe InferenceService (``inferenceservice.yaml``, replicas between
``kserve_min_replicas`` and ``kserve_max_replicas``, ``kserve_deployment_mode`` Standard or Knative) instead of the
Helm chart, which stays the default; the image must then carry a tag or digest (KServe has no chart default).
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def promote(
    compressed_model: Input[Model],
    compression_json: Input[Artifact],
    tenant: str,
    env: str,
    image: str,
    profile: str,
    repo_url: str,
    branch: str,
    run_id: str,
    promotion_report: Output[Markdown],
    app: str = "classifier",
    pipeline_name: str = "train-compress",
    kserve: bool = False,
    kserve_min_replicas: int = 1,
    kserve_max_replicas: int = 1,
    kserve_deployment_mode: str = "Standard",
) -> str:
    """Returns the pushed commit; fails, pushing nothing, on a failed gate or an unknown tenant or env."""
    from pathlib import Path

    from kubeforge.artifacts import label
    from kubeforge.config import load_platform
    from kubeforge.deploy.gitops import promote_to_remote, summarise
    from kubeforge.deploy.kserve import KServeOptions

    options = KServeOptions(min_replicas=kserve_min_replicas, max_replicas=kserve_max_replicas,
                            deployment_mode=kserve_deployment_mode) if kserve else None  # checked by promote
    result = promote_to_remote(compressed_model.path, compression_json.path, repo_url=repo_url, branch=branch,
                               tenant=tenant, env=env, image=image, platform=load_platform(),
                               profile=profile or None, run_id=run_id, pipeline=pipeline_name, app=app,
                               kserve=options)
    Path(promotion_report.path).write_text(summarise(result, repo_url, branch))
    promotion_report.metadata.update({"commit": result.commit, "path": result.path, "branch": branch})
    label(promotion_report, f"Promotion of {tenant}/{app} to {env}")
    return result.commit
