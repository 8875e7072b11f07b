"""`kubeforge tenant key add|rotate|revoke TENANT`: API keys of the LLM service's tenants as a GitOps change.

Each command rewrites manifests/llm/keys.yaml (a Secret of key ids and SHA-256 hashes; kubeforge.llm.tenancy.gitops
says why a plain Secret) and manifests/llm/tenants.yaml (budgets from the tenant overlays), prints the new key once,
and leaves the commit to you: nothing is applied to a cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from kubeforge.config import ConfigError

key_app = typer.Typer(no_args_is_help=True, help="API keys of the LLM service's tenants (hashes in a Secret in "
                                                 "git; the key is printed once).")
console = Console()
errors = Console(stderr=True)
RepoOption = Annotated[Path, typer.Option("--repo", help="root of the GitOps repository (holds manifests/)")]
TenantArgument = Annotated[str, typer.Argument(help="the tenant (its overlay needs an LLM budget)")]


def _fail(message: str) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(2)


def _report(change, action: str) -> None:
    for path in change.written:
        console.print(f"wrote {path}", highlight=False)
    if change.key is not None:
        console.print(f"{action} key {change.key_id} for tenant {change.tenant}; it is shown only now, store it "
                      "in the tenant's secret manager:", highlight=False, soft_wrap=True)
        typer.echo(change.key)
    else:
        console.print(f"revoked key {change.key_id} of tenant {change.tenant}", highlight=False)
    console.print("commit and merge the change: the service refuses or accepts the key within about a minute of "
                  "the Secret's update (docs/llm-tenants.md)", highlight=False, soft_wrap=True)


@key_app.command("add")
def key_add(tenant: TenantArgument, repo: RepoOption = Path(".")) -> None:
    """A new key for TENANT (its other keys keep working)."""
    from kubeforge.llm.tenancy.gitops import add_key

    try:
        _report(add_key(repo, tenant), "new")
    except ConfigError as exc:
        _fail(str(exc))


@key_app.command("rotate")
def key_rotate(tenant: TenantArgument, key_id: Annotated[str | None, typer.Option(
        help="the key to replace (needed when the tenant has several)")] = None, repo: RepoOption = Path(".")) -> None:
    """A new key in place of an old one, in one change (for no downtime: `add`, switch clients, then `revoke`)."""
    from kubeforge.llm.tenancy.gitops import rotate_key

    try:
        _report(rotate_key(repo, tenant, key_id), "rotated: new")
    except ConfigError as exc:
        _fail(str(exc))


@key_app.command("revoke")
def key_revoke(tenant: TenantArgument, key_id: Annotated[str, typer.Option(help="the key id to revoke (the part "
                                                                                 "after kf_, as in the audit log)")],
               repo: RepoOption = Path(".")) -> None:
    """Remove one of TENANT's keys."""
    from kubeforge.llm.tenancy.gitops import revoke_key

    try:
        _report(revoke_key(repo, tenant, key_id), "revoked")
    except ConfigError as exc:
        _fail(str(exc))
