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
    import tempfile

    from kubeforge.artifacts import hand_over_bento
    from kubeforge.llm.package import build_llm_bento
    from kubeforge.llm.source import resolve_lm_source

    served = resolve_lm_source(compressed_model.path)
    with tempfile.TemporaryDirectory() as workdir:
        built = build_llm_bento(served, workdir)
        hand_over_bento(built.archive, built.context, bento, build_context, package_report, bento_tag=built.bento_tag,
                        model_tag=built.base_tag, serving=f"{served.why} as model `{built.base_tag}`",
                        image="kubeforge-llm")
