"""What the launcher decides from what the API server returns, and what it refuses before contacting one.

Creating and watching jobs needs a live API server with the Trainer / training-operator CRDs: that path is exercised
by the cluster tests (tests/cluster), never here with a mock standing in for the server. The status and pod
documents below are shaped like the objects those controllers and the kubelet write.
"""

import pytest

from kubeforge.config import DistributedConfig, load_platform
from kubeforge.distributed.jobs import JobSpecError, TrainingJobRequest
from kubeforge.distributed.launcher import (PYTORCHJOB, TRAINJOB, JobFailed, JobOutcome, LaunchError,
                                            current_namespace, job_state, launch, pod_problems)


def condition(kind, status="True", reason="", message=""):
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-25T17:00:00Z"}


def test_trainjob_conditions():
    assert job_state({}, TRAINJOB) == ("Running", "", "")
    created = {"status": {"conditions": [condition("Suspended", "False", "Resumed")]}}
    assert job_state(created, TRAINJOB)[0] == "Running"
    done = {"status": {"conditions": [condition("Complete", reason="JobSetCompleted", message="jobset completed")]}}
    assert job_state(done, TRAINJOB) == ("Succeeded", "JobSetCompleted", "jobset completed")
    failed = {"status": {"conditions": [condition("Failed", reason="JobSetFailed",
                                                  message="jobset failed: node-0 exceeded backoffLimit")]}}
    assert job_state(failed, TRAINJOB) == ("Failed", "JobSetFailed", "jobset failed: node-0 exceeded backoffLimit")


def test_pytorchjob_conditions_and_failure_wins():
    running = {"status": {"conditions": [condition("Created", reason="PyTorchJobCreated"),
                                         condition("Running", reason="PyTorchJobRunning")]}}
    assert job_state(running, PYTORCHJOB) == ("Running", "PyTorchJobRunning", "")
    succeeded = {"status": {"conditions": [condition("Running", "False"), condition("Succeeded",
                                                                                    reason="PyTorchJobSucceeded")]}}
    assert job_state(succeeded, PYTORCHJOB)[0] == "Succeeded"
    both = {"status": {"conditions": [condition("Succeeded"), condition("Failed", reason="PyTorchJobFailed")]}}
    assert job_state(both, PYTORCHJOB)[0] == "Failed"
    assert job_state({"status": {"conditions": [condition("Complete")]}}, PYTORCHJOB)[0] == "Running"


def test_pod_problems_name_the_cause():
    pods = [
        {"metadata": {"name": "j-node-0-0"}, "status": {"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}},
        {"metadata": {"name": "j-node-0-1"}, "status": {"containerStatuses": [
            {"name": "node", "restartCount": 2, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}},
        {"metadata": {"name": "j-node-0-2"}, "status": {"containerStatuses": [
            {"name": "node", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}},
        {"metadata": {"name": "j-node-0-3"}, "status": {"containerStatuses": [
            {"name": "node", "state": {"running": {}}, "lastState": {}}]}},
    ]
    problems = pod_problems(pods)
    assert problems == [
        "j-node-0-0: not scheduled (Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.)",
        "j-node-0-1/node: exited 137 (OOMKilled), restarted 2x",
        "j-node-0-2/node: waiting (ImagePullBackOff: not found)",
    ]


def test_failure_report_carries_reason_pods_and_log_tail():
    outcome = JobOutcome("TrainJob", "j", "team-a", "Failed", "JobSetFailed", "node-0 failed",
                         ["j-node-0-0/node: exited 1 (Error)"],
                         {"j-node-0-0": "\n".join(f"line {i}" for i in range(100)) + "\nValueError: boom\n"})
    text = str(JobFailed(outcome))
    assert text.startswith("TrainJob team-a/j: Failed (JobSetFailed: node-0 failed)")
    assert "j-node-0-0/node: exited 1 (Error)" in text
    assert "ValueError: boom" in text and "line 99" in text and "line 50" not in text


def test_bad_requests_fail_before_any_cluster_is_contacted():
    platform = load_platform()
    request = TrainingJobRequest(name="kubeforge-train-x", namespace="team-a", image="r/kf:1",
                                 profile=platform.profile("gpu-t4"), settings=DistributedConfig(),
                                 worker_args=["--splits", "s"])
    # no api_client and no kubeconfig here: reaching connect() would be a LaunchError, not a JobSpecError
    with pytest.raises(JobSpecError, match="checkpoint_pvc is required"):
        launch(request)


def test_namespace_outside_a_pod_is_an_error(monkeypatch, tmp_path):
    from kubeforge.distributed import launcher

    monkeypatch.setattr(launcher, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    with pytest.raises(LaunchError, match="pass the tenant namespace"):
        current_namespace()
    (tmp_path / "ns").write_text("team-b\n")
    monkeypatch.setattr(launcher, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "ns")
    assert current_namespace() == "team-b"
