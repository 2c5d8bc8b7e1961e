"""models.finetune_record: the one place a fine-tuned card's run record is written and read (engine and plugin)."""

from __future__ import annotations

from engine.models.finetune_record import read_record, record_line


def test_the_record_round_trips_through_the_notes_it_ends():
    record = {"base": "aligncr-lite", "best_step": 950, "archive": {"scenes": 4}}
    notes = "Fine-tuned from aligncr-lite.safetensors.\n" + record_line(record)
    assert read_record(notes) == record


def test_notes_without_a_readable_record_give_none():
    assert read_record("") is None
    assert read_record("trained on SEN12MS-CR") is None
    assert read_record("finetune: {not json") is None
    assert read_record('finetune: [1, 2]') is None  # a record is an object
