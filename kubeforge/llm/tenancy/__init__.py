"""Tenants on the LLM service and the gateway: API keys (hashes only), which models a tenant may call, token and
concurrency budgets shared by a pod's workers, weighted fair admission, per-tenant metrics and one audit line per
request. The same layer (kubeforge.llm.tenancy.layer) guards the in-process engine and the gateway in front of an
external OpenAI-compatible upstream."""
