"""Model renames: rows measured under a model's old name move to the name of what they measured.

A row names the model it measured by (model, model_hash): the hash is of the corpus family file, so it
identifies the code that ran. When a model is renamed (issue 10: the masked encoder that was `transformer`
is now `transformer_padding_mask`, and `transformer` is a plain encoder), the rows of the old code move to
the new name, keyed by the old hash, so no row claims a model it did not measure. Applied to the database
by a data migration (migrations/versions/0004_relabel_transformer.py) and to every snapshot on import.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text


@dataclass(frozen=True)
class Relabel:
    """Rows of `old` whose model_hash is one of `model_hashes` are rows of `new`."""

    old: str
    new: str
    model_hashes: tuple[str, ...]
    why: str


RELABELS = (
    Relabel(
        old="transformer",
        new="transformer_padding_mask",
        # sha256(matrix/corpus/transformer.py)[:16] before issue 10: the file that held only the masked encoder
        model_hashes=("9dbd9b71d96484b0",),
        why="issue 10: `transformer` is now a plain encoder; the masked one is `transformer_padding_mask`",
    ),
)


def model_name(model: str, model_hash: str, relabels: tuple[Relabel, ...] = RELABELS) -> str:
    """The name a row measured with `model_hash` goes by now (unchanged when no rename applies)."""
    for r in relabels:
        if model == r.old and model_hash in r.model_hashes:
            return r.new
    return model


def relabel_rows(connection: Connection, relabels: tuple[Relabel, ...] = RELABELS, *, undo: bool = False) -> int:
    """Rename the case rows every relabel covers (or, with `undo`, name them back); returns rows changed.

    Plain SQL on the `case` table, so a migration can run it against the schema of its own revision.
    """
    changed = 0
    for r in relabels:
        src, dst = (r.new, r.old) if undo else (r.old, r.new)
        for model_hash in r.model_hashes:
            result = connection.execute(
                text('UPDATE "case" SET model = :dst WHERE model = :src AND model_hash = :hash'),
                {"src": src, "dst": dst, "hash": model_hash},
            )
            changed += result.rowcount or 0
    return changed
