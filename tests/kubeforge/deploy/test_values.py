import pytest
import yaml

from kubeforge.config import ConfigError, ServeConfig, load_platform
from kubeforge.deploy.schemas import validate_objects
from kubeforge.deploy.values import image_values, values_for_run, write_values
from tests.charts.conftest import pod_spec

PROFILES = [p.name for p in load_platform().profiles]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from kubeforge.config import ModelConfig
    from kubeforge.models import ModelSpec, build_model, save_model

    spec = ModelSpec(config=ModelConfig(hidden_sizes=[4]), input_dim=2, num_classes=2, feature_names=["a", "b"],
                     class_names=["x", "y"], scaler_mean=[0, 0], scaler_scale=[1, 1])
    path = tmp_path_factory.mktemp("run") / "train" / "trained_model"
    save_model(build_model(spec), spec, path)
    return path


@pytest.mark.parametrize("profile", PROFILES)
def test_values_for_every_profile_render_cleanly(render, model_dir, profile, tmp_path):
    chosen = load_platform().profile(profile)
    path = write_values(model_dir.parents[1], tmp_path / "values.yaml", load_platform(), profile,
                        "registry.example.com/team-a/classifier:1.2.3", ServeConfig(workers=2))
    values = yaml.safe_load(path.read_text())
    assert values["serving"]["workers"] == 2
    objects = render.objects("-f", str(path))
    assert validate_objects(objects) == []
    spec = pod_spec(objects)
    container = spec["containers"][0]
    assert container["image"] == "registry.example.com/team-a/classifier:1.2.3"
    assert container["resources"]["requests"] == {"cpu": chosen.cpu_request, "memory": chosen.memory_request}
    if chosen.uses_gpu:
        assert container["resources"]["limits"][chosen.gpu_resource] == chosen.gpu_count
        assert spec["nodeSelector"] == chosen.node_selector
        assert spec["priorityClassName"] == chosen.priority_class
    else:
        assert "nodeSelector" not in spec and "tolerations" not in spec


@pytest.mark.parametrize("image, expected", [
    ("reg.io/a/b:1.0", {"repository": "reg.io/a/b", "tag": "1.0"}),
    ("reg.io:5000/a/b:1.0", {"repository": "reg.io:5000/a/b", "tag": "1.0"}),
    ("reg.io/a/b@sha256:" + "c" * 64, {"repository": "reg.io/a/b", "digest": "sha256:" + "c" * 64}),
])
def test_image_references(image, expected):
    assert image_values(image) == expected


def test_bad_inputs_are_named(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="is not a valid reference"):
        image_values("just-a-name")
    with pytest.raises(ConfigError, match="unknown profile 'gpu-v100'"):
        write_values(model_dir, tmp_path / "v.yaml", load_platform(), "gpu-v100", "reg.io/a/b:1")
    with pytest.raises(ConfigError, match="does not exist"):
        values_for_run(tmp_path / "missing", load_platform().profile("cpu"), "reg.io/a/b:1")


def test_an_lm_run_gets_llm_values_that_render(render, tmp_path):
    model = tmp_path / "run" / "lm-pretrain" / "pretrained_model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    path = write_values(tmp_path / "run", tmp_path / "v.yaml", load_platform(), "gpu-t4", "reg.io/a/llm:1.0")
    values = yaml.safe_load(path.read_text())
    assert values["llm"] == {"enabled": True} and "serving" not in values
    assert values["podAnnotations"]["kubeforge.io/model-dir"] == str(model)
    assert validate_objects(render.objects("-f", str(path))) == []
