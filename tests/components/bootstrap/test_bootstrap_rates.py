"""The bootstrap habits → the simulator's per-reply rates, checked on the builder's own draws."""

from __future__ import annotations

import random

import pytest

from components.bootstrap.data import bootstrap_simulate_config, per_reply_rates, realised_rates
from components.common.config import load_config
from components.simulate.generate import _choose_content_problem, _make_reply


def _draw(sim, n: int, seed: int = 0) -> list[dict]:
    """n replies drawn exactly as ConversationBuilder.build draws them (problem, then kind)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        reply = _make_reply(rng, _choose_content_problem(rng, sim), set())
        out.append({"request_kind": reply.request_kind, "variant": reply.variant,
                    "problems": reply.problems})
    return out


@pytest.mark.parametrize("wrong,unsafe,over", [(0.3, 0.35, 0.3), (0.1, 0.6, 0.05), (0.5, 0.0, 0.0)])
def test_conditional_rates_come_out_as_configured(wrong: float, unsafe: float, over: float) -> None:
    cfg = load_config("ci", overrides=[f"bootstrap.rate_wrong_fact={wrong}",
                                       f"bootstrap.rate_unsafe_compliance={unsafe}",
                                       f"bootstrap.rate_over_refusal={over}"])
    got = realised_rates(_draw(bootstrap_simulate_config(cfg), 40000))
    # 40k replies: ~20k fact, ~6k unsafe, ~6k benign-edgy questions; 3 sigma is under 0.02
    assert got["wrong_fact"] == pytest.approx(wrong, abs=0.02)
    assert got["unsafe_compliance"] == pytest.approx(unsafe, abs=0.025)
    assert got["over_refusal"] == pytest.approx(over, abs=0.025)


def test_per_reply_rates_are_a_distribution_without_tone_or_instruction_problems() -> None:
    rates = per_reply_rates(0.3, 0.35, 0.3)
    assert rates["rate_off_tone"] == rates["rate_instruction_missed"] == 0.0
    assert 0 < sum(rates.values()) < 1
    assert per_reply_rates(0.0, 0.0, 0.0)["rate_wrong_fact"] == 0.0
    with pytest.raises(ValueError):
        per_reply_rates(1.0, 0.1, 0.1)


def test_simulate_config_carries_the_bootstrap_habits() -> None:
    cfg = load_config("ci", overrides=["bootstrap.rate_interruption=0.25", "bootstrap.rate_silence=0.15",
                                       "bootstrap.seed=5"])
    sim = bootstrap_simulate_config(cfg)
    assert (sim.rate_interruption, sim.rate_silence, sim.seed) == (0.25, 0.15, 5)
    assert sim.rate_no_consent == 0.0
    assert sim.rate_pii == pytest.approx(0.1)
    assert (sim.turns_min, sim.turns_max) == (cfg.bootstrap.turns_min, cfg.bootstrap.turns_max)
    assert sim.tts_cache_dir == cfg.simulate.tts_cache_dir


def test_realised_rates_counts() -> None:
    replies = [{"request_kind": "fact", "variant": "wrong", "problems": ["wrong_fact", "silence"]},
               {"request_kind": "fact", "variant": "correct", "problems": ["interruption"]},
               {"request_kind": "unsafe", "variant": "compliance", "problems": ["unsafe_compliance"]},
               {"request_kind": "small_talk", "variant": "polite", "problems": []}]
    got = realised_rates(replies)
    assert got["wrong_fact"] == 0.5 and got["unsafe_compliance"] == 1.0
    assert got["over_refusal"] is None  # no benign-edgy request in the sample
    assert got["interruption"] == 0.25 and got["silence"] == 0.25


def test_drills_cover_every_phrasing_at_every_gain_with_the_habits() -> None:
    from components.bootstrap.drills import plan
    from components.simulate import world as W

    cfg = load_config("ci", overrides=["bootstrap.drill_gains=[0.7,0.8,0.9,1.0]"])
    exchanges = plan(cfg)
    phrasings = sum(len(f.questions) for f in W.FACTS) + sum(
        len(r.prompts) for pool in (W.UNSAFE, W.BENIGN_EDGY, W.SMALL_TALK, W.INSTRUCTIONS) for r in pool)
    assert len(exchanges) == 4 * phrasings
    assert {(e.prompt, e.gain) for e in exchanges} == {(e.prompt, g) for e in exchanges for g in (0.7, 0.8, 0.9, 1.0)}
    got = realised_rates([{"request_kind": e.request_kind, "variant": e.variant, "problems": e.problems}
                          for e in exchanges])
    # a few hundred draws: within 4 standard errors of the habits
    assert got["wrong_fact"] == pytest.approx(cfg.bootstrap.rate_wrong_fact, abs=0.11)
    assert got["unsafe_compliance"] == pytest.approx(cfg.bootstrap.rate_unsafe_compliance, abs=0.24)
    assert got["over_refusal"] == pytest.approx(cfg.bootstrap.rate_over_refusal, abs=0.24)
    assert plan(cfg) == exchanges  # seeded
