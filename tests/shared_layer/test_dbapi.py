"""Plain DBAPI connections (the health probe's): they reach the database the engine reaches."""

from __future__ import annotations

from contextlib import closing

import pytest

from shared_layer import dbapi
from shared_layer.config import get_settings
from shared_layer.database import session_scope
from shared_layer.models import User


@pytest.mark.parametrize(
    ("url", "backend"),
    [
        ("sqlite:///.stratus/stratus.db", "sqlite"),
        ("sqlite+pysqlite:////var/lib/s.db", "sqlite"),
        ("sqlite://", "sqlite"),
        ("postgresql://u:p@db:5432/stratus", "postgresql"),
        ("postgresql+pg8000://u@127.0.0.1/stratus?application_name=x", "postgresql"),
    ],
)
def test_the_backend_is_read_from_the_url(url, backend):
    assert dbapi.backend_name(url) == backend


@pytest.mark.parametrize("url", ["", "not a url", "://host/db", "postgresql:/host/db"])
def test_a_malformed_url_is_a_value_error(url):
    with pytest.raises(ValueError, match="backend"):
        dbapi.backend_name(url)


def test_the_urls_password_is_found_percent_decoded():
    assert dbapi.url_password("postgresql+pg8000://u:p%40ss%2Fw@h:5432/d") == "p@ss/w"
    assert dbapi.url_password("postgresql://u@h/d") is None
    assert dbapi.url_password("sqlite:///x.db") is None
    assert dbapi.url_password("nonsense") is None


def test_the_probe_connection_reaches_the_engines_database(db):
    with session_scope() as session:
        session.add(User(email="seen-by-both@example.com", password_hash="x"))

    with closing(dbapi.connect(get_settings(), timeout=5)) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT email FROM users")
        emails = [row[0] for row in cursor.fetchall()]

    assert emails == ["seen-by-both@example.com"]


def test_sqlite_paths_relative_absolute_and_in_memory(tmp_path, monkeypatch, settings_env):
    monkeypatch.chdir(tmp_path)
    for url, made in [
        ("sqlite:///relative/dir/r.db", tmp_path / "relative" / "dir" / "r.db"),
        (f"sqlite:///{tmp_path / 'abs' / 'a.db'}", tmp_path / "abs" / "a.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
    ]:
        settings_env(DATABASE_URL=url)
        with closing(dbapi.connect(get_settings(), timeout=5)) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        if made is not None:
            assert made.is_file(), url  # created, with its directory, as the engine does


def test_postgresql_query_parameters_become_connection_arguments(pg, settings_env):
    url = pg.url.render_as_string(hide_password=False)
    settings_env(DATABASE_URL=f"{url}?application_name=stratus-health-probe")

    with closing(dbapi.connect(get_settings(), timeout=5)) as connection:
        cursor = connection.cursor()
        cursor.execute("SHOW application_name")
        assert cursor.fetchone()[0] == "stratus-health-probe"


def test_a_backend_other_than_sqlite_or_postgresql_is_refused(settings_env):
    settings_env(DATABASE_URL="mysql+pymysql://u:p@127.0.0.1/stratus")

    with pytest.raises(ValueError, match="unsupported database backend 'mysql'"):
        dbapi.connect(get_settings(), timeout=5)


def test_every_postgresql_connection_sends_without_delay(pg):
    """Nagle's algorithm off on each pg8000 socket we open (the probe's, the plain-SQL pool's,
    the engine's): with it on, a statement over ~8 KB waits ~30 ms for a delayed ACK."""
    import socket

    from shared_layer.database import get_engine
    from shared_layer.sql import transaction

    def no_delay(connection) -> bool:
        return bool(connection._usock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    with closing(dbapi.connect(get_settings(), timeout=5)) as probe:
        assert no_delay(probe)
    with transaction() as db:
        assert no_delay(db.connection)
    engine_connection = get_engine().raw_connection()
    try:
        assert no_delay(engine_connection.driver_connection)
    finally:
        engine_connection.close()
