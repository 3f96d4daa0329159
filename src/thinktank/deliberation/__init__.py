"""Ensemble and debate deliberation: runs, ranking math, judge-reply parsing, the expert library, the run store."""
