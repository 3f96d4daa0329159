"""A simulated multi-host deployment: thinktank hosts sharing PostgreSQL and Redis behind HAProxy (``fleet.fleet``)."""
