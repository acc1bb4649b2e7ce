"""Alembic environment: runs on the connection Backtalk hands over.

Backtalk runs migrations programmatically (``backtalk.store.engine.migrate``), passing
an open connection in ``config.attributes["connection"]``; there is no alembic.ini.
"""

from alembic import context

from backtalk.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
