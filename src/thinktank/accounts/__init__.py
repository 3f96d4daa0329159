"""Accounts: users, API keys, sessions, budgets and rate limits."""
