"""Developer tooling that is not part of the platform itself (test clusters and the like)."""
