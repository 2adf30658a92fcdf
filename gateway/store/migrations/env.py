"""Alembic environment for the gateway store.

``Store.open`` runs the migrations itself, handing over a connection that is already inside the
transaction (and, on PostgreSQL, holding the migration lock) through
``config.attributes["connection"]``. Without one, for a developer running ``alembic revision
--autogenerate`` against a scratch database, the URL comes from the ``sqlalchemy.url`` option;
offline mode renders SQL for that URL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from gateway.store.tables import metadata


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_offline() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("offline migrations need the sqlalchemy.url option")
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if isinstance(connection, sa.Connection):
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError('pass config.attributes["connection"] or set sqlalchemy.url')
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
