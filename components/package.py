"""package: build the serving Bento offline and hand over the .bento archive and its Dockerfile context."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def package(
    model: Input[Model],
    bento: Output[Artifact],
    build_context: Output[Artifact],
    package_report: Output[Markdown],
):
    """An image builder (docker/buildah/BuildKit/Kaniko) takes build_context as is; nothing else is needed."""
    import shutil
    import tempfile
    from pathlib import Path

    from kubeforge.artifacts import label
    from kubeforge.serving.package import build_bento

    with tempfile.TemporaryDirectory() as workdir:
        built = build_bento(model.path, workdir)
        shutil.copyfile(built.archive, bento.path)
        shutil.copytree(built.context, build_context.path, dirs_exist_ok=True)
    bento.metadata.update({"bento_tag": built.bento_tag, "model_tag": built.model_tag})
    label(bento, f"Bento {built.bento_tag}")
    build_context.metadata.update({"dockerfile": "env/docker/Dockerfile", "bento_tag": built.bento_tag})
    label(build_context, "Image build context")
    Path(package_report.path).write_text(
        f"# Serving package\n\nBento `{built.bento_tag}` serving model `{built.model_tag}`.\n\n"
        "Build the image from the `build_context` artifact with any OCI builder, e.g.\n\n"
        "```\ndocker build -f env/docker/Dockerfile -t REGISTRY/kubeforge-classifier:TAG .\n```\n")
    label(package_report, "Package report")
