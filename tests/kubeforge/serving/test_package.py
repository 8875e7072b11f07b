import os
import subprocess
import sys
import tarfile

import pytest

from kubeforge.serving.package import build_bento, pinned_requirements

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(served_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bento")
    return build_bento(served_model_dir, out, bentoml_home=out / "home"), out


def test_bento_has_a_dockerfile_context_with_the_model_and_pinned_requirements(built):
    result, _ = built
    context = result.context
    assert os.path.isfile(result.dockerfile)
    name, version = result.model_tag.split(":")
    assert os.path.isfile(os.path.join(context, "models", name, version, "model.safetensors"))
    requirements = open(os.path.join(context, "env", "python", "requirements.txt")).read().split()
    assert set(pinned_requirements()) <= set(requirements)
    entry = open(os.path.join(context, "src", "service.py")).read()
    assert result.model_tag in entry
    with tarfile.open(result.archive) as archive:
        assert "./bento.yaml" in archive.getnames()


def test_model_reference_resolves_in_the_store(built):
    result, out = built
    code = (f"import bentoml; m = bentoml.models.get({result.model_tag!r}); "
            "import os; print(sorted(os.listdir(m.path)))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "BENTOML_HOME": str(out / "home")},
                          capture_output=True, text=True, check=True)
    assert "model.json" in done.stdout and "model.safetensors" in done.stdout
    bento_yaml = open(os.path.join(result.context, "bento.yaml")).read()
    assert result.model_tag in bento_yaml


def test_a_directory_without_a_model_is_refused(tmp_path):
    from kubeforge.models import ModelError

    with pytest.raises(ModelError, match="no model.json"):
        build_bento(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_build_refuses_bad_source(tmp_path):
    from typer.testing import CliRunner

    from kubeforge.cli import app

    result = CliRunner().invoke(app, ["build", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.server
def test_the_built_bento_serves_its_stored_model(built, digits, tmp_path):
    import socket
    import time
    from pathlib import Path

    import httpx

    result, out = built
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if key != "KUBEFORGE_MODEL_DIR"}
    log = open(tmp_path / "bento.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", result.bento_tag, "--host",
                               "127.0.0.1", "--port", str(port)], env={**env, "BENTOML_HOME": str(out / "home")},
                              stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "bento.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        reply = httpx.post(f"http://127.0.0.1:{port}/predict", json={"instances": digits.X_test[:2].tolist()},
                           timeout=10)
        assert reply.status_code == 200, reply.text + (tmp_path / "bento.log").read_text()[-3000:]
        assert len(reply.json()["predictions"]) == 2 and reply.json()["model"]["features"] == 64
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
