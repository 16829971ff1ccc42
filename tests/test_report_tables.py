"""The tables as data (``droplab.report.tables``) and as the page draws them."""

from __future__ import annotations

from droplab.report import diff_table, render_table, sweep_table


def test_sweep_table_marks_the_pick_else_the_best_mean() -> None:
    settings = [{"rate": 0.1, "cv": {"nll": {"mean": 0.3, "std": 0.1}}},
                {"rate": 0.3, "cv": {"nll": {"mean": 0.2, "std": 0.1}}},
                {"rate": 0.5, "cv": {"nll": {"mean": 0.4, "std": 0.1}}}]
    # no pick: NLL is lower-is-better, so 0.3 wins
    best = sweep_table(settings)
    assert best is not None
    assert [r.cls for r in best.rows] == ["", "best", ""] and "best cv nll" in best.note
    assert '<tr class="best"><td>0.3</td><td>0.2 ± 0.1</td>' in render_table(best)
    picked = sweep_table(settings, pick={"rate": 0.5, "cv_score": 0.4})
    assert picked is not None
    html = render_table(picked)
    assert '<tr class="best"><td>0.5</td>' in html and html.count('class="best"') == 1
    assert "the sweep&#39;s pick highlighted" in html
    assert sweep_table([]) is None


def test_diff_table_marks_and_orders_the_columns_that_differ() -> None:
    rows = [{"lr": 0.1, "out": "runs/a", "seed": 0, "note": "x" * 50},
            {"lr": 0.1, "out": "runs/b", "seed": 1}]
    t = diff_table(rows, ["a", "b"], "Configuration")
    # differing first (paths last among them), then the constant ones; a missing key differs
    assert [c.text for c in t.head] == ["run", "seed", "note", "out", "lr"]
    assert [c.cls for c in t.head] == ["", "diff", "diff", "diff", ""]
    assert t.note == "— 3 of 4 columns differ between runs (highlighted, shown first)"
    long = t.rows[0].cells[1]
    assert len(long.text) == 40 and long.text.endswith("…") and long.title == "x" * 50
    assert t.rows[1].cells[1].text == "—"  # missing
    assert diff_table([{}], ["a"], "Summary").empty == "Summary: nothing recorded."
    html = render_table(t)
    assert '<th scope="row">a</th><td class="diff">0</td>' in html
    assert f'title="{"x" * 50}"' in html
