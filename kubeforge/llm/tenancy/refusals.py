"""The tenant layer's refusals, in the OpenAI error shape (kubeforge.llm.errors) with the headers that go with them:
``WWW-Authenticate`` on a 401, ``Retry-After`` and OpenAI's ``x-ratelimit-*`` on a 429."""

from __future__ import annotations

import math
from collections.abc import Iterable

from kubeforge.llm.errors import INVALID_REQUEST, PERMISSION, APIError

MISSING_KEY, INVALID_KEY, MALFORMED = "missing_api_key", "invalid_api_key", "malformed_authorization"
RATE_LIMITED = "rate_limit_exceeded"
TOKENS, CONCURRENCY = "tokens", "concurrency"  # the `reason` of a 429 (metrics label, error type)


class AuthError(APIError):
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", b'Bearer realm="kubeforge"'), *super().headers()]


class RateLimited(APIError):
    def __init__(self, message: str, reason: str, retry_after_s: float, limit: int, remaining: int):
        super().__init__(429, message, type=reason, code=RATE_LIMITED, retry_after_s=max(retry_after_s, 0.001))
        self.reason, self.limit, self.remaining = reason, limit, remaining

    def headers(self) -> list[tuple[bytes, bytes]]:
        # Retry-After is whole seconds, rounded up: a client that honours it finds the budget there
        kind = "tokens" if self.reason == TOKENS else "requests"
        return [(b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode()),
                (f"x-ratelimit-limit-{kind}".encode(), str(self.limit).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, self.remaining)).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), f"{self.retry_after_s:.3f}s".encode())]


def missing_key() -> AuthError:
    return AuthError(401, "missing API key: send 'Authorization: Bearer <key>' (a tenant's key, from `kubeforge "
                     "tenant key add`)", code=MISSING_KEY)


def invalid_key() -> AuthError:
    return AuthError(401, "invalid API key (unknown, revoked or mistyped)", code=INVALID_KEY)


def orphaned_key(tenant: str) -> AuthError:
    return AuthError(401, f"invalid API key: it belongs to tenant {tenant}, which no longer exists", code=INVALID_KEY)


def malformed(detail: str) -> AuthError:
    return AuthError(401, detail, code=MALFORMED)


def not_admin(tenant: str) -> APIError:
    return APIError(403, f"tenant {tenant} may not call the adapter admin API (it needs admin: true in the "
                    "tenants file)", type=PERMISSION, code="admin_only")


def model_not_visible(name: str, visible: Iterable[str]) -> APIError:
    """Exactly what an unknown model gets (kubeforge.llm.errors.model_not_found), listing only the tenant's own."""
    from kubeforge.llm.errors import model_not_found

    return model_not_found(name, list(visible))


def over_tokens(tenant: str, needed: int, limit: int, level: float, wait_s: float) -> RateLimited:
    return RateLimited(f"Rate limit reached for tenant {tenant} on tokens per minute: limit {limit}, available "
                       f"{max(0, int(level))}, requested {needed} (prompt + max_tokens). Try again in {wait_s:.2f}s.",
                       TOKENS, wait_s, limit, int(level))


def over_concurrency(tenant: str, limit: int) -> RateLimited:
    return RateLimited(f"Rate limit reached for tenant {tenant} on concurrent requests: limit {limit}. Try again "
                       "when one of them has finished.", CONCURRENCY, 1.0, limit, 0)


def too_large(tenant: str, needed: int, limit: int) -> APIError:
    return APIError(400, f"this request needs {needed} tokens (prompt + max_tokens, times n), more than tenant "
                    f"{tenant}'s whole budget of {limit} tokens per minute; lower max_tokens or n",
                    type=INVALID_REQUEST, param="max_tokens", code="request_too_large")
