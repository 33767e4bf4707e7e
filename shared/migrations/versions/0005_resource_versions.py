"""Resource versions, and the versions each build used and made.

``resource_versions``: every version a check, a webhook, a get or a put reported, per
pipeline, resource and resource configuration (``scope``), unique by the digest of its
canonical JSON, ordered by ``check_order``. ``build_versions``: a build's inputs (its gets'
versions) and outputs (its puts'), what ``passed:`` is answered from.

Revision ID: 0005
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pipeline_id", sa.Integer(), nullable=False),
        sa.Column("resource", sa.String(length=200), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("version", sa.JSON(), nullable=False),
        sa.Column("version_key", sa.String(length=64), nullable=False),
        sa.Column("metadata", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("check_order", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["pipeline_id"], ["pipelines.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "pipeline_id", "resource", "scope", "version_key", name="uq_resource_versions_key"
        ),
    )
    with op.batch_alter_table("resource_versions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_resource_versions_order",
            ["pipeline_id", "resource", "scope", "check_order"],
            unique=False,
        )
    op.create_table(
        "build_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("build_id", sa.Integer(), nullable=False),
        sa.Column("pipeline_id", sa.Integer(), nullable=False),
        sa.Column("job_name", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("resource", sa.String(length=200), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.ForeignKeyConstraint(["build_id"], ["builds.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["pipeline_id"], ["pipelines.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["resource_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "build_id", "direction", "name", "version_id", name="uq_build_versions_use"
        ),
    )
    with op.batch_alter_table("build_versions", schema=None) as batch_op:
        batch_op.create_index("ix_build_versions_job", ["pipeline_id", "job_name"], unique=False)
        batch_op.create_index("ix_build_versions_version", ["version_id"], unique=False)


def downgrade() -> None:
    op.drop_table("build_versions")
    op.drop_table("resource_versions")
