"""${message}
"""

from alembic import op

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
## branch_labels and depends_on: Alembic reads them as None when a script leaves them out.


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
