"""lm-package: build the LM service's Bento offline from the model lm-compress chose (ONNX, torchao or a plain
directory: the one measured) and hand over the .bento archive and its Dockerfile context."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def lm_package(
    compressed_model: Input[Model],
    bento: Output[Artifact],
    build_context: Output[Artifact],
    package_report: Output[Markdown],
):
    """An image builder (docker/buildah/BuildKit/Kaniko) takes build_context as is; nothing else is needed."""
    import shutil
    import tempfile
    from pathlib import Path

    from kubeforge.artifacts import label
    from kubeforge.llm.package import build_llm_bento
    from kubeforge.llm.source import resolve_lm_source

    served = resolve_lm_source(compressed_model.path)
    with tempfile.TemporaryDirectory() as workdir:
        built = build_llm_bento(served, workdir)
        shutil.copyfile(built.archive, bento.path)
        shutil.copytree(built.context, build_context.path, dirs_exist_ok=True)
    bento.metadata.update({"bento_tag": built.bento_tag, "model_tag": built.base_tag})
    label(bento, f"Bento {built.bento_tag}")
    build_context.metadata.update({"dockerfile": "env/docker/Dockerfile", "bento_tag": built.bento_tag})
    label(build_context, "Image build context")
    Path(package_report.path).write_text(
        f"# Serving package\n\nBento `{built.bento_tag}` serving {served.why} as model `{built.base_tag}`.\n\n"
        "Build the image from the `build_context` artifact with any OCI builder, e.g.\n\n"
        "```\ndocker build -f env/docker/Dockerfile -t REGISTRY/kubeforge-llm:TAG .\n```\n")
    label(package_report, "Package report")
