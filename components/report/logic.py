"""The preference-data report: what the judge found and which pairs the run made, as one HTML page.

Built from the run's manifests only (tokenize → resynthesize → pairs → judge): the pair mix (the
paper's A content / B interruption / C silence, and the timing-only vs content-related split it
reports as 27% / 73%), the judge's score distribution per axis, timing events, judge failures, and
a few examples — the user's request and the rejected vs chosen reply as text, with audio players
(the resynthesised user side mixed with each side's model channel, around the reply). The page is
self-contained (plots and audio inlined), so it works as a KFP HTML artefact and as an MLflow
artefact. Everything in it passed scrub: redacted text, synthetic user voice, no user audio.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.common.audio import decode_wav, encode_wav, resample
from components.common.config import Config
from components.common.stagekit import iter_items, manifest_chain
from components.common.storage import ObjectStore
from components.contract import (
    JUDGE_AXES,
    PAIR_TYPE_LETTER,
    ConversationJudgement,
    JudgedItem,
    Keys,
    ResynthesizedPair,
)

EXAMPLES = 4  # pairs with audio players (each adds ~0.3 MB of inlined audio per side)
CLIP_RATE = 16_000
CLIP_MARGIN_S = (4.0, 1.5)  # audio before the reply window, after its end
TIMING_TYPES = ("interruption", "silence")


@dataclass
class PairsReportData:
    manifests: dict[str, str]
    judged: int = 0
    replies: int = 0
    replies_judged: int = 0
    judge_failures: int = 0
    selected: int = 0
    problems: Counter = field(default_factory=Counter)  # axis -> replies flagged
    events: Counter = field(default_factory=Counter)  # timing event kind -> count
    scores: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in JUDGE_AXES})
    pairs: Counter = field(default_factory=Counter)  # pair type -> count
    tokenized: int = 0
    pairs_dataset: str | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        total = sum(self.pairs.values())
        timing = sum(self.pairs[t] for t in TIMING_TYPES)
        return {
            "judged": self.judged, "replies": self.replies, "replies_judged": self.replies_judged,
            "judge_failures": self.judge_failures, "selected": self.selected,
            "problems": dict(sorted(self.problems.items())),
            "timing_events": dict(sorted(self.events.items())),
            "pairs": {PAIR_TYPE_LETTER[t]: self.pairs[t] for t in PAIR_TYPE_LETTER},
            "pairs_total": total,
            "timing_only_share": round(timing / total, 3) if total else None,
            "content_share": round(1 - timing / total, 3) if total else None,
            "tokenized": self.tokenized, "pairs_dataset": self.pairs_dataset,
            "mean_scores": {a: round(float(np.mean(v)), 2) for a, v in self.scores.items() if v},
        }


def collect(store: ObjectStore, final_manifest_id: str, examples: int = EXAMPLES) -> PairsReportData:
    """Walk the run's manifests back from `final_manifest_id` (tokenize, or any later stage of
    this part of the pipeline) and gather the report's figures."""
    chain = manifest_chain(store, final_manifest_id)
    data = PairsReportData(manifests={stage: m.manifest_id for stage, m in chain.items()})
    if "judge" in chain:
        for raw in iter_items(store, chain["judge"]):
            item = JudgedItem.model_validate(raw)
            data.judged += 1
            data.judge_failures += item.judge_failures
            data.selected += len(item.selected)
            ref = item.judgement
            judgement = ConversationJudgement.model_validate(
                store.get_json(ref.key, version_id=ref.version_id))
            data.events.update(e.kind for e in judgement.events)
            for reply in judgement.replies:
                data.replies += 1
                data.replies_judged += reply.judged
                data.problems.update(reply.problems)
                for axis, score in reply.scores.items():
                    if score is not None and axis in data.scores:
                        data.scores[axis].append(score.score)
    if "tokenize" in chain:
        data.tokenized = chain["tokenize"].counts.get("items", 0)
        data.pairs_dataset = chain["tokenize"].stats.get("pairs_dataset")
    if "resynthesize" in chain:
        candidates: dict[str, list[ResynthesizedPair]] = {t: [] for t in PAIR_TYPE_LETTER}
        for raw in iter_items(store, chain["resynthesize"]):
            item = ResynthesizedPair.model_validate(raw)
            data.pairs[item.pair.type] += 1
            if len(candidates[item.pair.type]) < examples:
                candidates[item.pair.type].append(item)
        # Examples: the first pairs of each type in turn, so every type shows.
        for rank in range(examples):
            for kind in PAIR_TYPE_LETTER:
                if len(data.examples) < examples and rank < len(candidates[kind]):
                    data.examples.append(_example(store, candidates[kind][rank]))
    elif "pairs" in chain:
        for raw in iter_items(store, chain["pairs"]):
            data.pairs[raw["type"]] += 1
    return data


def _clip(store: ObjectStore, refs: list[Any], lo: float, hi: float) -> str:
    """The sum of the given mono 24 kHz channels between lo and hi seconds, as a base64 16 kHz
    WAV (a data URI's payload)."""
    mix: np.ndarray | None = None
    for ref in refs:
        audio, rate = decode_wav(store.get_bytes(ref.key, version_id=ref.version_id))
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        part = audio[int(lo * rate): int(hi * rate)].astype(np.float32)
        part = resample(part, rate, CLIP_RATE)
        if mix is None:
            mix = part
        else:
            n = max(len(mix), len(part))
            mix = np.pad(mix, (0, n - len(mix))) + np.pad(part, (0, n - len(part)))
    mix = np.zeros(1, np.float32) if mix is None else mix
    peak = float(np.max(np.abs(mix))) if mix.size else 0.0
    if peak > 1.0:
        mix = mix / peak
    return base64.b64encode(encode_wav(mix, CLIP_RATE)).decode()


def _example(store: ObjectStore, item: ResynthesizedPair) -> dict[str, Any]:
    pair = item.pair
    sides = [s for s in (pair.chosen, pair.rejected) if s.text]
    start = min([s.start for s in sides] or [pair.chosen.start])
    end = max([s.end for s in sides] or [pair.chosen.end])
    lo, hi = max(0.0, start - CLIP_MARGIN_S[0]), end + CLIP_MARGIN_S[1]
    return {
        "pair_id": pair.pair_id, "type": pair.type, "problems": pair.problems,
        "rejected": pair.rejected.text or "(silence)", "chosen": pair.chosen.text,
        "rejected_span": [round(pair.rejected.start, 2), round(pair.rejected.end, 2)],
        "chosen_span": [round(pair.chosen.start, 2), round(pair.chosen.end, 2)],
        "user_end": pair.user_end, "composer": pair.composer,
        "audio_rejected": _clip(store, [item.user_audio, item.rejected_model_audio], lo, hi),
        "audio_chosen": _clip(store, [item.user_audio, item.chosen_model_audio], lo, hi),
        "clip_start": round(lo, 2),
    }


def _plots(data: PairsReportData) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mix_ax, score_ax) = plt.subplots(1, 2, figsize=(11, 3.4),
                                           gridspec_kw={"width_ratios": [1, 2.2]})
    types = list(PAIR_TYPE_LETTER)
    mix_ax.bar([f"{PAIR_TYPE_LETTER[t]} {t}" for t in types], [data.pairs[t] for t in types],
               color=["#4c72b0", "#dd8452", "#55a868"])
    mix_ax.set_title("preference pairs by type")
    axes = [a for a in JUDGE_AXES if data.scores[a]]
    if axes:
        score_ax.boxplot([data.scores[a] for a in axes], tick_labels=[a.replace("_", "\n") for a in axes])
        score_ax.set_ylim(0.8, 5.2)
    score_ax.set_title("judge scores per axis (1 worst, 5 best)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def example_html(e: dict[str, Any], context: str = "") -> str:
    """One example of ``collect`` as the reports show it (this stage's page and the alignment
    bench's): rejected vs chosen, text and audio players; ``context`` is added to its title."""
    esc = html.escape
    title = " · ".join(esc(x) for x in (PAIR_TYPE_LETTER[e["type"]], e["type"], context) if x)
    composer = f" · composer {esc(e['composer'])}" if e.get("composer") else ""
    return f"""<div class="ex"><h3>{title} · <code>{esc(e['pair_id'])}</code></h3>
<p>fixes: {esc(', '.join(e['problems']) or '-')}{composer} · user ends at
{esc(str(e['user_end']))} s · clip from {e['clip_start']} s</p>
<table><tr><th></th><th>reply</th><th>span (s)</th><th>user + model audio</th></tr>
<tr><td>rejected</td><td>{esc(e['rejected'])}</td><td>{e['rejected_span']}</td>
<td><audio controls src="data:audio/wav;base64,{e['audio_rejected']}"></audio></td></tr>
<tr><td>chosen</td><td>{esc(e['chosen'])}</td><td>{e['chosen_span']}</td>
<td><audio controls src="data:audio/wav;base64,{e['audio_chosen']}"></audio></td></tr>
</table></div>"""


def render(data: PairsReportData) -> str:
    f = data.figures()
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(json.dumps(v))}</td></tr>" for k, v in f.items())
    examples = "".join(example_html(e) for e in data.examples) or "<p>no pairs in this run</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>duplexalign pairs</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
.ex{{margin:1.5em 0}}</style></head><body>
<h1>Judge and preference pairs</h1>
<p>manifests: {esc(json.dumps(data.manifests))}</p>
<p>Pair mix: timing-only (B + C) {esc(str(f['timing_only_share']))}, content-related (A)
{esc(str(f['content_share']))} — the paper's final mix was 0.27 / 0.73.</p>
<img alt="pair mix and judge score distributions" src="data:image/png;base64,{_plots(data)}">
<h2>figures</h2><table>{rows}</table>
<h2>examples (redacted text; synthetic user voice)</h2>{examples}
</body></html>"""


def write_pairs_report(cfg: Config, final_manifest_id: str, html_path: str | None = None,
                       log_mlflow: bool = True) -> tuple[str, dict[str, Any]]:
    """Build the report, store it at reports/pairs/<manifest>/pairs.html (and at `html_path`,
    the KFP HTML artefact), log it to MLflow; returns (key, figures)."""
    store = ObjectStore.from_config(cfg.storage)
    data = collect(store, final_manifest_id)
    page = render(data)
    key = Keys.report("pairs", final_manifest_id, "pairs.html")
    store.put_bytes(key, page.encode(), content_type="text/html")
    if html_path:
        with open(html_path, "w", encoding="utf-8") as fh:
            fh.write(page)
    figures = data.figures()
    if log_mlflow:
        _log_to_mlflow(cfg, final_manifest_id, figures, page)
    return key, figures


def _log_to_mlflow(cfg: Config, manifest_id: str, figures: dict[str, Any], page: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.mlflow.experiment)
    with mlflow.start_run(run_name=f"pairs {manifest_id}"):
        mlflow.set_tags({"profile": cfg.profile, "manifest.tokenize": manifest_id,
                         "pairs_dataset": figures.get("pairs_dataset") or ""})
        metrics = {k: float(v) for k, v in figures.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.update({f"pairs_{k}": float(v) for k, v in figures["pairs"].items()})
        metrics.update({f"problems_{k}": float(v) for k, v in figures["problems"].items()})
        mlflow.log_metrics(metrics)
        mlflow.log_dict(figures, "pairs_figures.json")
        mlflow.log_text(page, "pairs_report.html")
