"""The demo's REPORT.md: its tables keep their columns whatever the cells hold; its live table marks who wrote
each explanation; `trail train` prints progress lines without a terminal (no broker, no model)."""

from __future__ import annotations

import re

from streams.cli.demo import markdown_cell, render_step, write_outputs
from streams.cli.train import plain_progress_line

UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def record(rank: int, title: str) -> dict:
    return {"item_id": str(rank), "rank": rank, "title": title, "predicted_count": 10.34,
            "explanation": "Cooling after a jump: it had 11 interactions in the last week (up from 4, +175.0%); "
                           "expected about 10.3 next week.",
            "window": {"end": 1_000}}


def test_a_pipe_in_a_cell_is_escaped_and_a_line_break_flattened() -> None:
    assert markdown_cell("Heat (1995) | Action, Thriller") == "Heat (1995) \\| Action, Thriller"
    assert markdown_cell("two\nlines") == "two lines"


def test_report_rows_keep_their_columns_when_titles_hold_pipes(tmp_path) -> None:
    records = [record(1, "Heat (1995) | Action, Crime, Thriller"), record(2, "Toy Story (1995) | Animation")]
    write_outputs(tmp_path, records, {"records": 2, "model": "m | v", "replay_s": 1.0})
    lines = (tmp_path / "REPORT.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| key")]
    step_rows = rows[rows.index("| # | item | forecast | why |") + 1:]
    assert len(step_rows) == 2
    for row in rows:
        columns = 4 if row in step_rows or row.startswith("| # ") else 2
        assert len(UNESCAPED_PIPE.split(row)) == columns + 2, row
    assert "Heat (1995) \\| Action, Crime, Thriller" in step_rows[0]


def test_the_live_table_marks_which_explanations_the_model_wrote() -> None:
    from rich.console import Console

    step = [record(1, "Heat (1995) | Action"), record(2, "Toy Story (1995) | Animation")]
    step[0]["explanation_source"] = "model"
    step[1]["explanation_source"] = "template"
    for r in step:
        r.update(recent_counts=[1, 2, 3, 4], model={"name": "trail-tiny"})
    console = Console(record=True, width=220, color_system=None)
    console.print(render_step(step))
    rows = [line for line in console.export_text().splitlines() if "Heat" in line or "Toy Story" in line]
    assert len(rows) == 2
    assert rows[0].rstrip(" │|").endswith("model") and rows[1].rstrip(" │|").endswith("template")


def test_training_progress_without_a_terminal_is_a_plain_line() -> None:
    line = plain_progress_line(50, 700, 32.0, "forecast 0.589 explanation 1.403")
    assert line == "train 50/700 steps, 32 s elapsed, ~416 s left, forecast 0.589 explanation 1.403"
