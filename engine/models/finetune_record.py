"""Where a fine-tuned weights file keeps its run's record: one line of its model card's ``notes``.

``engine finetune`` (``training/finetune/run.py``) writes ``NOTES_KEY`` followed by a JSON record (base model, archive
summary, settings, best step) as the last line of the card's notes; the engine and the QGIS plugin read it back
from there. Standard library only: the plugin's Python (no torch) imports it.
"""

from __future__ import annotations

import json
from typing import Any

NOTES_KEY = "finetune: "


def record_line(record: dict[str, Any]) -> str:
    """The notes line that holds ``record``."""
    return NOTES_KEY + json.dumps(record, default=str)


def read_record(notes: str) -> dict[str, Any] | None:
    """The record in a card's ``notes``; None when the notes hold none (or an unreadable one)."""
    _, found, text = notes.partition(NOTES_KEY)
    if not found or not text:
        return None
    try:
        record = json.loads(text.splitlines()[0])
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
