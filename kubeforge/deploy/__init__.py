"""Deployment: Helm chart values from a run and a scheduling profile (one definition of a profile)."""
