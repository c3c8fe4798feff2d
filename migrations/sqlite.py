"""What SQLite's table rebuilds (batch mode) lose and revisions must put back: the change counter's triggers."""

from __future__ import annotations

from alembic import op


def restore_change_triggers(table: str) -> None:
    """SQLite rebuilds a table to change its constraints (copy, drop, rename), and the drop takes the table's
    triggers with it: put back the change counter's (0003), which the API's response cache relies on."""
    if op.get_bind().dialect.name != "sqlite":
        return
    for event in ("insert", "update", "delete"):
        op.execute(f'CREATE TRIGGER IF NOT EXISTS tr_{table}_{event}_data_change AFTER {event.upper()} ON "{table}" '
                   "BEGIN UPDATE data_change SET counter = counter + 1 WHERE id = 1; END")
