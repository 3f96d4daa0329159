"""Ensemble and debate deliberation: ranking math and judge-reply parsing."""
