"""The reaper's claims on artifacts, and an index on the artifacts' step.

``reaping_at`` records when a tick claimed a ``reaping`` row, so a second reaper
leaves it alone while a row left by a tick that died is finished by a later one.
``step_id`` is what ``finish_step`` looks a step's outputs up by, and what deleting
a step (destroying a pipeline) sets to NULL: without an index each is a full scan.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reaping_at", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_artifacts_step", ["step_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_index("ix_artifacts_step")
        batch_op.drop_column("reaping_at")
