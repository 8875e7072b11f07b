"""Serving: the request contract and model runtime (plain Python), and the BentoML service built on them."""

# The most of a refused body any kubeforge HTTP layer reads and drops before it answers 413 (kubeforge.serving.limits,
# kubeforge.llm.asgi). Here, not in limits, so the LLM gateway can share it without importing BentoML.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
