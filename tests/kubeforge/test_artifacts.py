"""The glue between library results and pipeline artifacts, on plain objects (no KFP)."""

from dataclasses import dataclass, field
from pathlib import Path

from kubeforge.artifacts import hand_over_bento


@dataclass
class FakeArtifact:
    path: str
    metadata: dict = field(default_factory=dict)


def test_a_package_step_hands_over_the_archive_the_context_and_a_report(tmp_path: Path):
    archive = tmp_path / "built.bento"
    archive.write_bytes(b"bento bytes")
    context = tmp_path / "context"
    (context / "env" / "docker").mkdir(parents=True)
    (context / "env" / "docker" / "Dockerfile").write_text("FROM python\n")
    out = tmp_path / "out"
    out.mkdir()
    bento, build_context, report = (FakeArtifact(str(out / name)) for name in ("bento", "context", "report.md"))
    hand_over_bento(archive, context, bento, build_context, report, bento_tag="kubeforge-llm:abc",
                    model_tag="kubeforge-llm-base:def", serving="the chosen onnx-int8 model", image="kubeforge-llm")
    assert Path(bento.path).read_bytes() == b"bento bytes"
    assert (Path(build_context.path) / "env" / "docker" / "Dockerfile").read_text() == "FROM python\n"
    assert bento.metadata == {"bento_tag": "kubeforge-llm:abc", "model_tag": "kubeforge-llm-base:def",
                              "display_name": "Bento kubeforge-llm:abc"}
    assert build_context.metadata["dockerfile"] == "env/docker/Dockerfile"
    text = Path(report.path).read_text()
    assert "Bento `kubeforge-llm:abc` serving the chosen onnx-int8 model." in text
    assert "-t REGISTRY/kubeforge-llm:TAG" in text and report.metadata["display_name"] == "Package report"
