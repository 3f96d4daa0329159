"""Alerts to operators: budget thresholds crossed and deployments cooling down, sent to a signed webhook and/or
by email (see docs/alerts.md). ``config`` holds the YAML models, ``service`` the watching and claiming,
``delivery`` the webhook and the mail, ``claims`` what makes each alert go out once."""
