"""Serving: the request contract and model runtime (plain Python), and the BentoML service built on them."""
