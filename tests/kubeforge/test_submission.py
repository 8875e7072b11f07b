"""`kubeforge submit`: dry run, input refusals, and each error path that can be exercised for real here.

No Kubeflow Pipelines API server runs on this machine. Error handling is exercised against real sockets: a closed
loopback port (unreachable host) and `KfpStandIn`, a small HTTP server on 127.0.0.1 that answers the KFP v2beta1
REST paths with the status codes and JSON bodies the real API server sends (grpc-gateway style errors). It stands in
for KFP's *responses* only — it checks nothing about what it receives; the tests assert on what our client sent and
on what it printed. A run that actually starts needs the live API server: that test is skipped with a reason.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubeforge.cli import app

runner = CliRunner()
API = "/apis/v2beta1"


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


class KfpStandIn:
    """Answers ``(method, path-without-query) -> (status, body, headers)``; 404 JSON for anything else."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, object]]):
        self.routes, self.requests = routes, []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                stand_in.requests.append({"method": self.command, "path": path, "query": self.path.partition("?")[2],
                                          "authorization": self.headers.get("Authorization"), "body": body})
                status, payload = stand_in.routes.get((self.command, path),
                                                      (404, {"error": "Not Found", "code": 5, "message": "Not Found"}))
                if status == 302:
                    self.send_response(302)
                    self.send_header("Location", payload)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                html = isinstance(payload, str)
                data = payload.encode() if html else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if html else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> KfpStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.requests]


HEALTHY = {("GET", f"{API}/healthz"): (200, {"multi_user": True, "pipeline_store": "database"})}
EMPTY_LISTS = {("GET", f"{API}/experiments"): (200, {}), ("GET", f"{API}/pipelines"): (200, {})}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token"))
    return tmp_path


def submit_args(host: str, *extra: str) -> list[str]:
    return ["submit", "train-evaluate", "--host", host, "--namespace", "team-a", "-p", "epochs=3", *extra]


def test_dry_run_writes_the_package_and_lists_the_calls_without_sending_anything(workdir):
    result = invoke(*submit_args(f"http://127.0.0.1:{closed_port()}", "--dry-run", "--profile", "gpu-t4",
                                 "--experiment", "nightly", "--service-account", "team-a-runner"))
    assert result.exit_code == 0, result.output
    package = workdir / "build" / "train-evaluate.yaml"
    assert "Tesla-T4" in package.read_text()
    out = result.output
    assert "dry run: nothing sent" in out and "profile gpu-t4" in out and "training cache: off" in out
    calls = [line.split(".", 1)[1].split("#")[0].split() for line in out.splitlines() if line.startswith("  ")]
    assert [(method, path.split("?")[0]) for method, path in calls] == [
        ("GET", f"{API}/healthz"), ("GET", f"{API}/experiments"), ("GET", f"{API}/pipelines"),
        ("POST", f"{API}/pipelines"), ("POST", f"{API}/pipelines/upload_version"), ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs")]
    assert "namespace=team-a" in out and "display_name%3Dnightly" in out
    assert '{"epochs": 3}' in out and "service account team-a-runner" in out


def test_enable_caching_is_compiled_into_the_training_task(workdir):
    result = invoke(*submit_args("https://kfp.example.com", "--dry-run", "--enable-caching", "-o", "p.yaml"))
    assert result.exit_code == 0 and "training cache: on" in result.output
    import yaml

    spec = next(yaml.safe_load_all((workdir / "p.yaml").read_text()))
    assert spec["root"]["dag"]["tasks"]["train"]["cachingOptions"]["enableCache"] is True


@pytest.mark.parametrize("args, message", [
    (["--namespace", "Team_A", "--host", "https://kfp.example.com"],
     "namespace: Value error, 'Team_A' is not a DNS-1123 label"),
    (["--namespace", "team-a"], "give --host URL (the KFP API endpoint) or --kube-context NAME"),
    (["--namespace", "team-a", "--host", "https://kfp.example.com", "--kube-context", "prod"],
     "give --host or --kube-context, not both"),
    (["--namespace", "team-a", "--host", "kfp.example.com"],
     "host: Value error, 'kfp.example.com' is not an http(s):// URL"),
    (["--namespace", "team-a", "--host", "https://kfp.example.com", "-p", "epoch=3"], "unknown parameter 'epoch'"),
    (["--namespace", "team-a", "--host", "https://kfp.example.com", "--profile", "tpu"], "unknown profile 'tpu'"),
])
def test_bad_input_is_refused_before_compiling(workdir, args, message):
    result = invoke("submit", "train-evaluate", *args)
    assert result.exit_code == 2 and message in one_line(result)
    assert not (workdir / "build").exists()


def test_unreachable_host_is_one_line_and_exit_2(workdir):
    port = closed_port()
    result = invoke(*submit_args(f"http://127.0.0.1:{port}"))
    assert result.exit_code == 2
    assert f"cannot reach the KFP API at http://127.0.0.1:{port}" in one_line(result)
    assert "Connection refused" in result.output


@pytest.mark.server
def test_a_host_that_is_not_the_kfp_api(workdir):
    with KfpStandIn({}) as kfp:
        result = invoke(*submit_args(kfp.url))
    assert result.exit_code == 2
    assert f"{kfp.url} does not serve the KFP API (GET {API}/healthz: 404" in one_line(result)
    assert kfp.calls() == [f"GET {API}/healthz"]


@pytest.mark.server
def test_a_login_redirect_is_reported_as_an_auth_problem(workdir):
    """What an Istio/Dex gateway does to a request without a session: 302 to the login page, which is HTML."""
    with KfpStandIn({("GET", f"{API}/healthz"): (302, "/dex/auth?client_id=kubeflow-oidc-authservice"),
                     ("GET", "/dex/auth"): (200, "<html><body>Log in to Your Account</body></html>")}) as kfp:
        result = invoke(*submit_args(kfp.url))
    assert result.exit_code == 2
    line = one_line(result)
    assert "answered with text/html" in line and "/dex/auth" in line and "pass --token" in line
    assert not [c for c in kfp.calls() if c.startswith("POST")]


@pytest.mark.server
def test_credentials_refused(workdir):
    with KfpStandIn({**HEALTHY, ("GET", f"{API}/experiments"): (401, {
            "error": "Unauthenticated", "code": 16,
            "message": "Request header error: there is no user identity header."})}) as kfp:
        result = invoke(*submit_args(kfp.url, "--token", "expired-token"))
    assert result.exit_code == 2
    line = one_line(result)
    assert f"the KFP API at {kfp.url} refused the credentials (401" in line and "bearer token (--token)" in line
    assert kfp.requests[1]["authorization"] == "Bearer expired-token"
    assert kfp.calls() == [f"GET {API}/healthz", f"GET {API}/experiments"]  # nothing created


@pytest.mark.server
def test_the_in_cluster_service_account_token_is_sent_when_present(workdir, monkeypatch):
    token_file = workdir / "token"
    token_file.write_text("projected-sa-token")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    with KfpStandIn({**HEALTHY, ("GET", f"{API}/experiments"): (401, {"error": "Unauthenticated", "code": 16,
                                                                    "message": "token audience mismatch"})}) as kfp:
        result = invoke(*submit_args(kfp.url))
    assert result.exit_code == 2 and f"in-cluster ServiceAccount token ({token_file})" in one_line(result)
    assert {r["authorization"] for r in kfp.requests} == {"Bearer projected-sa-token"}


@pytest.mark.server
def test_unknown_or_foreign_namespace(workdir):
    with KfpStandIn({**HEALTHY, ("GET", f"{API}/experiments"): (403, {
            "error": "PermissionDenied", "code": 7,
            "message": "User 'a@example.com' is not authorized with reason: (request: namespace: team-a)"})}) as kfp:
        result = invoke(*submit_args(kfp.url))
    assert result.exit_code == 2
    line = one_line(result)
    assert "namespace 'team-a' cannot be used (403" in line and "not a contributor" in line
    assert "namespace=team-a" in kfp.requests[1]["query"]
    assert not [c for c in kfp.calls() if not c.startswith("GET")]


@pytest.mark.server
def test_single_user_kfp_cannot_take_a_tenant_run(workdir):
    with KfpStandIn({("GET", f"{API}/healthz"): (200, {"multi_user": False})}) as kfp:
        result = invoke(*submit_args(kfp.url))
    assert result.exit_code == 2 and "single-user mode" in one_line(result)


@pytest.mark.server
def test_a_failed_run_creation_deletes_what_this_submission_created(workdir):
    routes = {**HEALTHY, **EMPTY_LISTS,
              ("POST", f"{API}/pipelines"): (200, {"pipeline_id": "p-1", "display_name": "train-evaluate"}),
              ("POST", f"{API}/pipelines/upload_version"): (200, {"pipeline_id": "p-1", "pipeline_version_id": "v-1"}),
              ("POST", f"{API}/experiments"): (200, {"experiment_id": "e-1", "display_name": "kubeforge"}),
              ("POST", f"{API}/runs"): (500, {"error": "Internal", "code": 13,
                                               "message": "Failed to create a run: quota exceeded"}),
              ("DELETE", f"{API}/experiments/e-1"): (200, {}),
              ("DELETE", f"{API}/pipelines/p-1/versions/v-1"): (200, {}),
              ("DELETE", f"{API}/pipelines/p-1"): (200, {})}
    with KfpStandIn(routes) as kfp:
        result = invoke(*submit_args(kfp.url, "--service-account", "team-a-runner"))
    assert result.exit_code == 2
    line = one_line(result)
    assert "run creation failed: 500" in line and "quota exceeded" in line
    assert "nothing was left behind (3 object(s) removed)" in line
    assert kfp.calls() == [
        f"GET {API}/healthz", f"GET {API}/experiments", f"GET {API}/pipelines", f"POST {API}/pipelines",
        f"POST {API}/pipelines/upload_version", f"POST {API}/experiments", f"POST {API}/runs",
        f"DELETE {API}/experiments/e-1", f"DELETE {API}/pipelines/p-1/versions/v-1", f"DELETE {API}/pipelines/p-1"]
    pipeline = json.loads(kfp.requests[3]["body"])
    assert pipeline["display_name"] == "train-evaluate" and pipeline["namespace"] == "team-a"
    assert b"pipelineInfo" in kfp.requests[4]["body"]  # the compiled package is what is uploaded
    run = json.loads(kfp.requests[6]["body"])
    assert run["experiment_id"] == "e-1" and run["service_account"] == "team-a-runner"
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-1", "pipeline_version_id": "v-1"}
    assert run["runtime_config"]["parameters"] == {"epochs": 3}


@pytest.mark.server
def test_existing_pipeline_and_experiment_are_reused_and_never_deleted(workdir):
    routes = {**HEALTHY,
              ("GET", f"{API}/experiments"): (200, {"experiments": [{"experiment_id": "e-0"}], "total_size": 1}),
              ("GET", f"{API}/pipelines"): (200, {"pipelines": [{"pipeline_id": "p-0"}], "total_size": 1}),
              ("POST", f"{API}/pipelines/upload_version"): (200, {"pipeline_id": "p-0", "pipeline_version_id": "v-9"}),
              ("POST", f"{API}/runs"): (400, {"error": "InvalidArgument", "code": 3,
                                               "message": "Invalid input error: parameter epochs"}),
              ("DELETE", f"{API}/pipelines/p-0/versions/v-9"): (200, {})}
    with KfpStandIn(routes) as kfp:
        result = invoke(*submit_args(kfp.url))
    assert result.exit_code == 2 and "run creation failed: 400" in one_line(result)
    assert [c for c in kfp.calls() if c.split()[0] in ("POST", "DELETE")] == [
        f"POST {API}/pipelines/upload_version", f"POST {API}/runs", f"DELETE {API}/pipelines/p-0/versions/v-9"]
    assert "pipelineid=p-0" in kfp.requests[3]["query"]


@pytest.mark.server
def test_a_failed_clean_up_is_reported_not_hidden(workdir):
    routes = {**HEALTHY, **EMPTY_LISTS,
              ("POST", f"{API}/pipelines"): (200, {"pipeline_id": "p-1"}),
              ("POST", f"{API}/pipelines/upload_version"): (503, {"error": "Unavailable", "code": 14,
                                                                  "message": "object store unavailable"})}
    with KfpStandIn(routes) as kfp:
        result = invoke(*submit_args(kfp.url))
    line = one_line(result)
    assert result.exit_code == 2 and "pipeline version upload failed: 503" in line
    assert "could not delete the pipeline p-1 it created" in line


def test_kube_context_that_does_not_exist(workdir):
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(port=closed_port()))
    result = invoke("submit", "train-evaluate", "-n", "team-a", "--kube-context", "prod",
                    env={"KUBECONFIG": str(kubeconfig)})
    assert result.exit_code == 2 and "kube context 'prod'" in one_line(result)


def test_kube_context_whose_api_server_is_unreachable(workdir):
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(port=closed_port()))
    result = invoke("submit", "train-evaluate", "-n", "team-a", "--kube-context", "local",
                    env={"KUBECONFIG": str(kubeconfig)})
    assert result.exit_code == 2
    assert "kube context 'local': cannot reach the API server" in one_line(result)


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: local, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: me, user: {{token: not-a-real-token}}}}]
contexts: [{{name: local, context: {{cluster: local, user: me}}}}]
current-context: local
"""


@pytest.mark.skipif(not os.environ.get("KUBEFORGE_TEST_KFP_HOST"),
                    reason="needs a live Kubeflow Pipelines API server in multi-user mode (none runs on this machine); "
                           "set KUBEFORGE_TEST_KFP_HOST, KUBEFORGE_TEST_KFP_NAMESPACE and KUBEFORGE_KFP_TOKEN")
def test_submit_starts_a_run_on_a_live_kfp(workdir):
    host, namespace = os.environ["KUBEFORGE_TEST_KFP_HOST"], os.environ["KUBEFORGE_TEST_KFP_NAMESPACE"]
    result = invoke("submit", "train-evaluate", "--host", host, "--namespace", namespace, "-p", "epochs=2",
                    "--experiment", "kubeforge-tests")
    assert result.exit_code == 0, result.output
    assert f"{host.rstrip('/')}/#/runs/details/" in result.output
    assert Path("build/train-evaluate.yaml").is_file()
