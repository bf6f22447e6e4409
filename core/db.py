"""A connection to the PostgreSQL server's maintenance database, for what Django's own
connection cannot do: create Bronco's database on a dev machine, drop it for a fresh demo."""

import psycopg2
from django.conf import settings


def maintenance_connection() -> "psycopg2.extensions.connection":
    """Autocommit (CREATE/DROP DATABASE refuse to run in a transaction), same server and
    credentials as DATABASES["default"]. Raises psycopg2.Error when the server is down."""
    db = settings.DATABASES["default"]
    conn = psycopg2.connect(
        dbname="postgres",
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=db.get("PORT") or None,
        connect_timeout=3,
    )
    conn.autocommit = True
    return conn
