"""thinktank's database URL (``postgresql://…``, ``postgresql+asyncpg://…``) as a libpq connection string for
psycopg, which the job queue connects with."""

from __future__ import annotations

from sqlalchemy.engine import make_url

__all__ = ["libpq_conninfo"]

_LIBPQ = frozenset({
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "application_name", "connect_timeout", "options",
    "target_session_attrs", "host", "hostaddr", "port", "passfile", "channel_binding", "gssencmode",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
})
_SSL = {"true": "require", "false": "disable", "1": "require", "0": "disable"}
_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def libpq_conninfo(url: str) -> str:
    """The same server, database, user and password; asyncpg's ``ssl=`` becomes libpq's ``sslmode=``; query
    parameters libpq does not know (asyncpg's own) are left out. Raises ValueError for a non-PostgreSQL URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    query: dict[str, str | tuple[str, ...]] = {}
    for key, value in parsed.query.items():
        if key == "ssl" and isinstance(value, str):
            mode = _SSL.get(value.lower(), value.lower())
            if mode in _SSLMODES:
                query["sslmode"] = mode
        elif key in _LIBPQ:
            query[key] = value
    return parsed.set(drivername="postgresql", query=query).render_as_string(hide_password=False)
