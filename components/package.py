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
    import tempfile

    from kubeforge.artifacts import hand_over_bento
    from kubeforge.serving.package import build_bento

    with tempfile.TemporaryDirectory() as workdir:
        built = build_bento(model.path, workdir)
        hand_over_bento(built.archive, built.context, bento, build_context, package_report, bento_tag=built.bento_tag,
                        model_tag=built.model_tag, serving=f"model `{built.model_tag}`", image="kubeforge-classifier")
