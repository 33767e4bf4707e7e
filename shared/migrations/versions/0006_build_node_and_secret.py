"""Where a build's pods run, and whether it has a Secret to remove.

``node``: the node the build's first pod was scheduled on (its ``spec.nodeName``),
kept so that, with a ReadWriteOnce artifact store, a step launched after the
others ended is pinned to the node that holds the claim. ``has_secret``: the
build's Secret (``podspec.secret_name``) was written for its steps' credentials;
the reaper deletes it once the build has finished and clears the flag.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node", sa.String(length=253), nullable=True))
        batch_op.add_column(
            sa.Column("has_secret", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.create_index("ix_builds_has_secret", ["has_secret"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.drop_index("ix_builds_has_secret")
        batch_op.drop_column("has_secret")
        batch_op.drop_column("node")
