"""Alembic environment of the ledger; run by :func:`thrifty.ledger.migrations.migrate`.

There is no alembic.ini: the caller configures Alembic in code and passes an
open connection in ``config.attributes["connection"]`` (or, from the
``alembic`` command line, a ``sqlalchemy.url`` main option).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from thrifty.ledger.migrations import VERSION_TABLE, include_object
from thrifty.ledger.models import Base

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    from thrifty.ledger.db import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.begin() as connection:
            _configure(connection)
            context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
