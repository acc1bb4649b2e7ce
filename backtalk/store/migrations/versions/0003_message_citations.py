"""Citations on assistant messages, so a saved conversation keeps its clickable moments.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("citations", postgresql.JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "citations")
