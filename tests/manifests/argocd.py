"""What Argo CD's ApplicationSet controller makes of a tenant's app set on a checkout, step by step as Argo CD v3.5
does it (applicationset/generators/{matrix,git}.go, controllers/template): the matrix of the env list and the git
files generator, every string of the template rendered with each parameter set, the ``templatePatch`` rendered and
merged in. The Go templates are rendered by Go's text/template itself (gotemplate.go, built once per session with the
Go toolchain the schema tests already need), so ``{{- if eq ...}}``, whitespace trimming and ``missingkey=error``
behave exactly as in the controller. Shapes this module does not model are refused, never approximated.
"""

from __future__ import annotations

import json
import posixpath
import subprocess
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

RENDERER_SOURCE = Path(__file__).with_name("gotemplate.go")
RESOURCES_FINALIZER = "resources-finalizer.argocd.argoproj.io"  # added when the template sets no finalizer


@lru_cache(maxsize=1)
def _renderer() -> Path:
    binary = Path(tempfile.mkdtemp(prefix="kubeforge-gotemplate-")) / "gotemplate"
    done = subprocess.run(["go", "build", "-o", str(binary), str(RENDERER_SOURCE)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return binary


def render(jobs: list[tuple[str, dict[str, Any]]], options: list[str]) -> list[str]:
    """Each (template, params) rendered by text/template with the app set's goTemplateOptions."""
    if not jobs:
        return []
    payload = json.dumps([{"template": t, "params": p, "options": options} for t, p in jobs])
    done = subprocess.run([str(_renderer())], input=payload, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _file_params(repo: Path, file: Path) -> dict[str, Any]:
    """A git files generator's parameters in goTemplate mode: the file's keys, plus ``path``."""
    relative = file.relative_to(repo).as_posix()
    directory = posixpath.dirname(relative)
    content = yaml.safe_load(file.read_text()) or {}
    assert isinstance(content, dict), f"{relative}: a list of parameter sets is not modelled here"
    return {**content, "path": {"path": directory, "basename": posixpath.basename(directory),
                                "filename": posixpath.basename(relative), "segments": directory.split("/")}}


def generator_params(repo: Path, app_set: dict) -> list[dict[str, Any]]:
    """The parameter sets of the app set's one generator: a matrix of a list and a git files generator."""
    spec = app_set["spec"]
    assert spec.get("goTemplate") is True, "only goTemplate app sets are modelled"
    (generator,) = spec["generators"]
    assert set(generator) == {"matrix"} and set(generator["matrix"]) == {"generators"}, generator
    env_list, git = generator["matrix"]["generators"]
    assert set(env_list) == {"list"} and set(git) == {"git"}, generator
    items = git["git"]["files"]
    assert not any(item.get("exclude") for item in items), "exclude patterns are not modelled"
    params = []
    for element in env_list["list"]["elements"]:
        # the second generator is itself rendered with each parameter set of the first (matrix.go)
        patterns = render([(item["path"], element) for item in items], spec.get("goTemplateOptions", []))
        files = sorted({path for pattern in patterns for path in repo.glob(pattern) if path.is_file()})
        for file in files:
            params.append({**_file_params(repo, file), **element})  # the first generator's keys win (mergo)
    return params


def _strings(node: Any, found: list[str]) -> None:
    if isinstance(node, str):
        found.append(node)
    elif isinstance(node, dict):
        for value in node.values():
            _strings(value, found)
    elif isinstance(node, list):
        for value in node:
            _strings(value, found)


def _replace(node: Any, rendered: Iterator[str]) -> Any:
    if isinstance(node, str):
        return next(rendered)
    if isinstance(node, dict):
        return {key: _replace(value, rendered) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace(value, rendered) for value in node]
    return node


def _merge(target: dict, patch: dict, where: str = "") -> dict:
    """A strategic merge patch on an Application: maps merge, null deletes, lists are replaced (no list the patch
    may touch has a merge strategy; ObjectMeta's finalizers and ownerReferences would, so they are refused)."""
    merged = dict(target)
    for key, value in patch.items():
        path = f"{where}/{key}"
        assert path not in ("/metadata/finalizers", "/metadata/ownerReferences"), f"{path}: merge lists not modelled"
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, path)
        else:
            merged[key] = value
    return merged


def applications(repo: Path, app_set: dict) -> list[dict]:
    """The Applications the app set generates from this checkout, in generation order."""
    spec = app_set["spec"]
    options = spec.get("goTemplateOptions", [])
    template = spec["template"]
    strings: list[str] = []
    _strings(template, strings)
    result = []
    for params in generator_params(repo, app_set):
        app = _replace(template, iter(render([(s, params) for s in strings], options)))
        metadata = {**app["metadata"], "namespace": app_set["metadata"]["namespace"]}
        metadata.setdefault("finalizers", [RESOURCES_FINALIZER])
        app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": metadata,
               "spec": app["spec"]}
        if spec.get("templatePatch"):
            (patch_text,) = render([(spec["templatePatch"], params)], options)
            patch = yaml.safe_load(patch_text)
            app = _merge(app, patch) if patch else app
        result.append(app)
    names = [a["metadata"]["name"] for a in result]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates, f"the app set would refuse to generate duplicate Applications {duplicates}"
    return result


def tenant_app_set(repo: Path, cluster_env: str, tenant: str) -> dict:
    """The tenant's app set as the env's Argo CD entry point builds it (its env list patched in)."""
    done = subprocess.run(["kubectl", "kustomize", str(repo / "manifests" / "clusters" / cluster_env)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (app_set,) = [o for o in yaml.safe_load_all(done.stdout)
                  if o and o["kind"] == "ApplicationSet" and o["metadata"]["name"] == f"apps-{tenant}"]
    return app_set


def argo_applications(repo: Path, cluster_env: str, tenant: str) -> list[dict]:
    """What the tenant's app set generates from this checkout on the env's cluster."""
    return applications(repo, tenant_app_set(repo, cluster_env, tenant))
