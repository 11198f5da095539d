"""The pairs report page: figures from the gathered data, and a self-contained page."""

from __future__ import annotations

from collections import Counter

from components.report.logic import PairsReportData, render


def _data() -> PairsReportData:
    data = PairsReportData(manifests={"judge": "judge-x", "tokenize": "tokenize-y"}, judged=3,
                           replies=7, replies_judged=5, selected=4,
                           pairs=Counter({"content": 1, "interruption": 1, "silence": 2}),
                           problems=Counter({"interruption": 1, "unresponsiveness": 2}))
    data.scores["factual_accuracy"] = [1.5, 4.5]
    data.scores["interruption"] = [1.0, 5.0, 5.0]
    data.examples.append({"pair_id": "p1", "type": "silence", "problems": ["unresponsiveness"],
                          "rejected": "(silence)", "chosen": "Travel Pass costs <$10> a day.",
                          "rejected_span": [3.0, 4.0], "chosen_span": [3.0, 4.0],
                          "user_end": 2.6, "composer": "kb-compose-1", "audio_rejected": "UklGRg==",
                          "audio_chosen": "UklGRg==", "clip_start": 0.0})
    return data


def test_figures_count_pairs_by_letter_and_the_timing_share() -> None:
    f = _data().figures()
    assert f["pairs"] == {"A": 1, "B": 1, "C": 2}
    assert f["pairs_total"] == 4
    assert f["timing_only_share"] == 0.75 and f["content_share"] == 0.25
    assert f["mean_scores"] == {"factual_accuracy": 3.0, "interruption": 3.67}


def test_page_is_self_contained_and_escapes_text() -> None:
    page = render(_data())
    assert page.count("<audio controls src=\"data:audio/wav;base64,") == 2
    assert "data:image/png;base64," in page  # the plots are inlined
    assert "&lt;$10&gt;" in page and "<$10>" not in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


def test_empty_run_renders() -> None:
    page = render(PairsReportData(manifests={}))
    assert "no pairs in this run" in page
