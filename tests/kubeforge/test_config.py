import pytest

from kubeforge.config import (ConfigError, DataConfig, ModelConfig, PlatformConfig, RunConfig, SchedulingProfile,
                              load_platform, parse_param_assignments)


def test_flat_round_trip_keeps_every_field():
    flat = RunConfig().to_flat()
    assert RunConfig.from_flat(flat) == RunConfig()
    assert set(flat) == set(RunConfig.flat_fields())


def test_from_flat_names_unknown_parameter():
    with pytest.raises(ConfigError, match="unknown parameter 'epoch'"):
        RunConfig.from_flat({"epoch": 3})


def test_from_flat_names_bad_value():
    with pytest.raises(ConfigError, match="epochs: Input should be greater than or equal to 1"):
        RunConfig.from_flat({"epochs": 0})
    with pytest.raises(ConfigError, match="learning_rate"):
        RunConfig.from_flat({"learning_rate": "fast"})


def test_param_assignments_are_typed_by_their_field():
    values = parse_param_assignments(["epochs=5", "hidden_sizes=[64, 32]", "mixed_precision=false", "dataset=123"])
    assert values == {"epochs": 5, "hidden_sizes": [64, 32], "mixed_precision": False, "dataset": "123"}


@pytest.mark.parametrize("item, message", [
    ("epochs", "not of the form key=value"),
    ("=3", "not of the form key=value"),
    ("nope=1", "unknown parameter 'nope'"),
    ("hidden_sizes=[1,", "cannot parse value"),
])
def test_param_assignment_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        parse_param_assignments([item])


def test_file_dataset_requires_label_column():
    with pytest.raises(ValueError, match="label_column is required"):
        DataConfig(dataset="data.csv")
    assert DataConfig(dataset="data.csv", label_column="y").label_column == "y"


def test_split_fractions_leave_training_rows():
    with pytest.raises(ValueError, match="at least 20% of rows for training"):
        DataConfig(val_fraction=0.45, test_fraction=0.45)


@pytest.mark.parametrize("model", ["transformer", "pkg.mod:", ":Class"])
def test_model_name_must_be_known_or_an_import_path(model):
    with pytest.raises(ValueError, match="unknown model"):
        ModelConfig(model=model)


def test_builtin_platform_has_gpu_and_cpu_profiles():
    platform = load_platform()
    assert platform.default_profile == "cpu"
    t4 = platform.profile("gpu-t4")
    assert t4.gpu_count == 1 and t4.node_selector == {"nvidia.com/gpu.product": "Tesla-T4"}
    assert platform.profile("mig-1g.10gb").gpu_resource == "nvidia.com/mig-1g.10gb"
    assert not platform.profile("cpu").uses_gpu


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown profile 'gpu-v100'; known: cpu, gpu-t4"):
        load_platform().profile("gpu-v100")


def test_gpu_profile_without_gpu_toleration_is_refused():
    with pytest.raises(ValueError, match="does not tolerate the GPU taint"):
        SchedulingProfile(name="bad", gpu_count=1)


def test_bad_quantity_is_refused():
    with pytest.raises(ValueError, match="cpu_request"):
        SchedulingProfile(name="bad", cpu_request="lots")


def test_platform_rejects_duplicate_profiles_and_unknown_default():
    cpu = SchedulingProfile(name="cpu")
    with pytest.raises(ValueError, match="defined twice"):
        PlatformConfig(profiles=[cpu, cpu])
    with pytest.raises(ValueError, match="default_profile 'gpu' is not among"):
        PlatformConfig(profiles=[cpu], default_profile="gpu")


def test_load_platform_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_platform(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: [{name: cpu, gpu_count: -1}]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: .*gpu_count"):
        load_platform(bad)


def test_platform_file_from_environment(tmp_path, monkeypatch):
    custom = tmp_path / "platform.yaml"
    custom.write_text("image: registry.example/kf:1\ndefault_profile: small\nprofiles: [{name: small}]\n")
    monkeypatch.setenv("KUBEFORGE_PLATFORM_CONFIG", str(custom))
    assert load_platform().image == "registry.example/kf:1"
