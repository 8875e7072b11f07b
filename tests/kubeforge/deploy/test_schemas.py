from kubeforge.deploy.schemas import SERVICE_MONITOR_CRD, validate_objects


def deployment(**spec):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx"}]}}, **spec}}


def test_a_valid_object_has_no_errors():
    assert validate_objects([deployment(replicas=2)]) == []


def test_wrong_types_and_unknown_fields_are_named_with_their_path():
    bad = deployment(replicas="two")
    bad["spec"]["template"]["spec"]["containers"][0]["imagee"] = "typo"
    errors = validate_objects([bad])
    assert "Deployment/web: spec/replicas: 'two' is not of type 'integer'" in errors
    assert any("spec/template/spec/containers/0" in e and "'imagee' was unexpected" in e for e in errors)


def test_unknown_kinds_are_reported():
    assert validate_objects([{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}]) == [
        "Widget/w: no schema for example.com/v1 Widget"]


def test_custom_resources_are_checked_against_their_crd():
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "m"},
               "spec": {"selector": {}, "endpoints": [{"port": "http", "intervall": "30s"}]}}
    errors = validate_objects([monitor], (SERVICE_MONITOR_CRD,))
    assert any("'intervall' was unexpected" in e for e in errors)
