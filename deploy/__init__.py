"""Deployment files; ``deploy.multihost`` is a simulated multi-host deployment usable from tests."""
