"""``duplexalign bench train``: preference-training throughput of our trainer step, against TRL.

Three legs, one run (random weights everywhere: speed does not depend on what a model knows):

1. **Ours vs TRL** (CPU, fp32). The same small random Llama (a vocabulary of 16k so the LM head
   weighs as in real models: its share of the matmul parameters is reported), the same
   synthetic pairs (prompts longer than completions, as in dialogue), the same batch size,
   number of steps, loss (DPO-LN = TRL ``sigmoid_norm``, same β) and optimizer (torch AdamW,
   constant LR, same clipping); reference log-probs computed once before timing on both sides
   (TRL ``precompute_ref_log_probs=True``). Ours = collate → ``HFCausalPolicy.logps`` →
   ``preference_loss`` → backward → step (``components.train.step.train_step``); TRL =
   ``DPOTrainer.train()`` with gradient checkpointing and bf16 off (TRL's defaults turn both
   on; ours are off). Figures: tokens/s of each (tokens = every non-pad input token of both
   sides), the ratio (target ≥ 1.3), and the loss of each at every step (same weights, same
   inputs: equal within 1e-4; step 1 is log 2 on both sides by construction, the later steps
   check gradients and updates too, hence an LR of 1e-3 that moves the loss). Both time steps
   2..N+1 wall to wall (data, logging and all), the first step is a warm-up. TRL's tokenized
   ids are checked equal to ours.

   Where the ratio comes from: TRL 1.16's fused LM head scores every position on CPU (it
   compacts to the completion positions only where Triton runs, i.e. on CUDA); ours applies the
   head to the scored positions only, and runs the backbone without an attention mask (right
   padding + causal attention: SDPA's is_causal path). On CUDA TRL compacts too, so the CPU
   ratio is an upper bound of what to expect there.
2. **Moshi** (the embedded LM preset, random weights, on ``train.device``): frames/s of a
   text-only step (temporal transformer + text head) vs a joint step (+ depformer and the audio
   codebooks), each with cached reference log-probs; and the text step with the reference
   computed inside the step (a frozen copy's no-grad forward per step) — what caching saves.
3. **MFU** of the text step and of our HF step: model FLOPs (6 × parameters touched per position;
   the HF head only at the scored positions) per second over the device's peak. CPU: the peak is
   MEASURED (best fp32 matmul FLOP/s of this process, so MFU is relative to what this box gives
   now); CUDA: the dense bf16 peak of the device by name (H100 989 TFLOP/s).

``--quick``: tiny sizes (seconds; the tests). stderr: progress; stdout: a table, then one JSON
line of figures. Needs no services.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models (imported lazily below)

import numpy as np
import torch

from components.common.config import Config, TrainConfig
from pipelines.bench.common import OtherLoad, emit, fmt, say, table

TARGET_SPEEDUP = 1.3
LOSS_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Sizes:
    """What one run measures (``FULL`` by default, ``QUICK`` for the tests)."""

    # HF leg: a Llama of a few M params, vocabulary >= 16k
    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    pairs_per_step: int
    prompt: tuple[int, int]  # tokens, [min, max]
    completion: tuple[int, int]
    steps: int  # timed steps (after one warm-up step)
    # Moshi leg
    moshi_size: str
    frames: int  # per pair
    window: int  # reply window per side, frames
    moshi_pairs: int
    moshi_steps: int
    matmul: int  # side of the square matmul that measures the CPU peak


FULL = Sizes(vocab=16384, hidden=256, layers=4, heads=4, intermediate=1024, pairs_per_step=4,
             prompt=(96, 160), completion=(16, 40), steps=5, moshi_size="small", frames=256,
             window=50, moshi_pairs=4, moshi_steps=3, matmul=1024)
QUICK = Sizes(vocab=2048, hidden=64, layers=2, heads=2, intermediate=128, pairs_per_step=2,
              prompt=(24, 32), completion=(4, 8), steps=1, moshi_size="tiny", frames=48,
              window=12, moshi_pairs=2, moshi_steps=1, matmul=512)

# Dense bf16 peak FLOP/s by device name (vendor figures, no sparsity).
CUDA_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12,
                  "A10": 125e12, "L4": 121e12}


# ----------------------------------------------------------------------------- devices


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def peak_flops(device: torch.device, n: int) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from): CUDA by device name, CPU by measurement."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in CUDA_BF16_PEAK.items():
            if key in name:
                return peak, f"{name}: dense bf16 peak (vendor figure)"
        return float("nan"), f"{name}: no peak figure known"
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = 0.0
    for _ in range(3):
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            a @ b
            reps += 1
        best = max(best, 2.0 * n ** 3 * reps / (time.perf_counter() - t0))
    return best, (f"measured: best fp32 {n}x{n} matmul of this process, "
                  f"{torch.get_num_threads()} thread(s)")


# ----------------------------------------------------------------------------- HF leg


def tiny_llama(s: Sizes, seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden,
                         num_hidden_layers=s.layers, num_attention_heads=s.heads,
                         num_key_value_heads=s.heads, intermediate_size=s.intermediate,
                         max_position_embeddings=s.prompt[1] + s.completion[1] + 8,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=2,
                         bos_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.train()


def offline_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer over "w3".."w<vocab-1>" (no hub): TRL tokenizes text pairs
    itself, so the synthetic ids are written as words it maps back to the same ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="</s>")


def synthetic_pairs(s: Sizes, n: int, seed: int) -> list[Any]:
    """``n`` TextPairs: a long prompt, two shorter completions ending in EOS (id 2)."""
    from components.train.hf_policy import TextPair

    rng = np.random.default_rng(seed)

    def ids(lo_hi: tuple[int, int]) -> list[int]:
        return rng.integers(3, s.vocab, size=int(rng.integers(lo_hi[0], lo_hi[1] + 1))).tolist()

    return [TextPair(f"pair-{i}", ids(s.prompt), ids(s.completion) + [2],
                     ids(s.completion) + [2]) for i in range(n)]


def _tokens(pairs: list[Any]) -> int:
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_ours(model: Any, pairs: list[Any], cfg: TrainConfig, s: Sizes,
             full_cfg: Config) -> dict[str, Any]:
    from components.train.hf_policy import HFCausalPolicy
    from components.train.optim import make_optimizer
    from components.train.step import score, train_step

    policy = HFCausalPolicy(model, cfg, pad_id=0)
    steps = _chunks(pairs, s.pairs_per_step)
    t0 = time.perf_counter()
    reference = [score(policy, policy.collate(chunk)) for chunk in steps]
    ref_s = time.perf_counter() - t0
    optimizer = make_optimizer(policy.param_groups(), cfg)
    losses = [train_step(policy, optimizer, [policy.collate(steps[0])], [reference[0]], cfg).loss]
    flops = 0.0
    with OtherLoad(full_cfg) as load:
        t0 = time.perf_counter()
        for chunk, ref in zip(steps[1:], reference[1:]):
            batch = policy.collate(chunk)
            flops += policy.train_flops(batch)
            losses.append(train_step(policy, optimizer, [batch], [ref], cfg).loss)
        wall = time.perf_counter() - t0
    tokens = _tokens([p for chunk in steps[1:] for p in chunk])
    return {"losses": losses, "tokens_per_s": tokens / wall, "wall_s": wall,
            "tokens": tokens, "reference_s": ref_s, "flops_per_s": flops / wall,
            "other_load": load.share}


def run_trl(model: Any, pairs: list[Any], cfg: TrainConfig, s: Sizes,
            workdir: str, full_cfg: Config) -> dict[str, Any]:
    import datasets
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    def words(ids: list[int]) -> str:
        return " ".join(f"w{i}" if i > 2 else "</s>" for i in ids)

    # Text pairs as TRL reads them: completions begin with a space (TRL concatenates prompt +
    # completion strings) and end with the EOS token (so TRL adds none).
    datasets.disable_progress_bars()
    data = Dataset.from_list([{"prompt": words(p.prompt_ids), "chosen": " " + words(p.chosen_ids),
                               "rejected": " " + words(p.rejected_ids)} for p in pairs])
    times: list[float] = []
    losses: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times.append(time.perf_counter())

    class RecordingDPOTrainer(DPOTrainer):
        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach() if not return_outputs else loss[0].detach()))
            return loss

    args = DPOConfig(
        output_dir=workdir, per_device_train_batch_size=s.pairs_per_step,
        gradient_accumulation_steps=1, max_steps=s.steps + 1, learning_rate=cfg.temporal_lr,
        lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        adam_beta1=cfg.adam_betas[0], adam_beta2=cfg.adam_betas[1], adam_epsilon=cfg.adam_eps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        loss_type=["sigmoid_norm"], beta=cfg.dpo_ln.beta, precompute_ref_log_probs=True,
        max_length=None, gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
        train_sampling_strategy="sequential", dataloader_num_workers=0, report_to=[],
        logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        seed=cfg.seed)
    t0 = time.perf_counter()
    trainer = RecordingDPOTrainer(model=model, args=args, train_dataset=data,
                                  processing_class=offline_tokenizer(s.vocab),
                                  callbacks=[StepClock()])
    setup_s = time.perf_counter() - t0
    ds: Any = trainer.train_dataset
    same_ids = all(ds[i]["prompt_ids"] == p.prompt_ids and ds[i]["chosen_ids"] == p.chosen_ids
                   and ds[i]["rejected_ids"] == p.rejected_ids for i, p in enumerate(pairs))
    # Trainer prints its summary dict on stdout, whose last line must stay our JSON.
    with OtherLoad(full_cfg) as load, contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    wall = times[-1] - times[0]
    tokens = _tokens(pairs[s.pairs_per_step:])
    return {"losses": losses, "tokens_per_s": tokens / wall, "wall_s": wall,
            "tokens": tokens, "setup_s": setup_s, "same_token_ids": same_ids,
            "steps_run": len(times), "other_load": load.share}


def hf_leg(cfg: Config, s: Sizes) -> dict[str, Any]:
    tcfg = cfg.train.model_copy(update={"loss": "dpo_ln", "master_weights": "plain",
                                        "temporal_lr": 1e-3, "gradient_checkpointing": False,
                                        "lora": False})
    model0 = tiny_llama(s, cfg.train.seed)
    emb = model0.get_input_embeddings().weight.numel()
    head = model0.get_output_embeddings().weight.numel()
    params = sum(p.numel() for p in model0.parameters())
    pairs = synthetic_pairs(s, s.pairs_per_step * (s.steps + 1), cfg.train.seed)
    say(f"HF leg: Llama {params / 1e6:.1f} M params (vocab {s.vocab}), "
        f"{len(pairs)} pairs, {s.steps + 1} steps of {s.pairs_per_step}")
    say("  ours: collate → logps (head at scored positions) → DPO-LN → AdamW")
    ours = run_ours(copy.deepcopy(model0), pairs, tcfg, s, cfg)
    say("  TRL DPOTrainer (sigmoid_norm, precompute_ref_log_probs)")
    with tempfile.TemporaryDirectory(prefix="bench-train-trl-") as tmp:
        trl = run_trl(copy.deepcopy(model0), pairs, tcfg, s, tmp, cfg)
    completion = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return {
        "hf_params": params, "hf_vocab": s.vocab, "hf_hidden": s.hidden, "hf_layers": s.layers,
        "hf_head_share": round(head / (params - emb), 3),
        "hf_pairs_per_step": s.pairs_per_step, "hf_timed_steps": s.steps,
        "hf_completion_share": round(completion / _tokens(pairs), 3),
        "hf_beta": tcfg.dpo_ln.beta, "hf_lr": tcfg.temporal_lr,
        "ours_tokens_per_s": round(ours["tokens_per_s"], 1),
        "trl_tokens_per_s": round(trl["tokens_per_s"], 1),
        "speedup": round(ours["tokens_per_s"] / trl["tokens_per_s"], 3),
        "target_speedup": TARGET_SPEEDUP,
        "meets_target": ours["tokens_per_s"] / trl["tokens_per_s"] >= TARGET_SPEEDUP,
        "ours_first_loss": ours["losses"][0], "trl_first_loss": trl["losses"][0],
        "first_loss_diff": abs(ours["losses"][0] - trl["losses"][0]),
        "first_loss_equal": abs(ours["losses"][0] - trl["losses"][0]) <= LOSS_TOLERANCE,
        # Step 1's loss is log 2 on both sides whatever the code (policy = reference): the
        # later steps' losses check the gradients and the optimizer updates too.
        "ours_losses": ours["losses"], "trl_losses": trl["losses"],
        "loss_max_diff": max(abs(a - b) for a, b in zip(ours["losses"], trl["losses"])),
        "losses_equal": len(ours["losses"]) == len(trl["losses"]) and max(
            abs(a - b) for a, b in zip(ours["losses"], trl["losses"])) <= LOSS_TOLERANCE,
        "trl_same_token_ids": trl["same_token_ids"], "trl_steps_run": trl["steps_run"],
        "ours_reference_s": round(ours["reference_s"], 3), "trl_setup_s": round(trl["setup_s"], 2),
        "ours_flops_per_s": ours["flops_per_s"],
        "ours_other_load": ours["other_load"], "trl_other_load": trl["other_load"],
        "trl_version": __import__("trl").__version__,
    }


# ----------------------------------------------------------------------------- Moshi leg


def moshi_pairs(layout: Any, s: Sizes, seed: int) -> list[Any]:
    """Synthetic pair tensors: shared context, the two sides differ in their reply windows (the
    rejected reply starts earlier: an interruption-like pair)."""
    from components.streams.pairset import PAIR_TYPES, PairTensors
    from components.streams.tokenizer import PAD_ID

    rng = np.random.default_rng(seed)
    q, T = layout.num_codebooks, s.frames
    out = []
    for i in range(s.moshi_pairs):
        chosen = np.empty((1 + 2 * q, T), np.int32)
        chosen[0] = np.where(rng.random(T) < 0.3, rng.integers(4, layout.text_card, T), PAD_ID)
        chosen[1:] = rng.integers(0, layout.card, (2 * q, T))
        rejected = chosen.copy()
        lo, hi = T - s.window - 4, T - 4
        shift = min(6, lo)
        rejected[0, lo - shift:hi - shift] = np.where(
            rng.random(s.window) < 0.3, rng.integers(4, layout.text_card, s.window), PAD_ID)
        rejected[1:1 + q, lo - shift:hi - shift] = rng.integers(0, layout.card, (q, s.window))
        out.append(PairTensors(pair_id=f"moshi-{i}", type=PAIR_TYPES[i % len(PAIR_TYPES)],
                               chosen=chosen, rejected=rejected,
                               windows=np.array([lo, hi, lo - shift, hi - shift], np.int32)))
    return out


def _moshi_run(lm0: Any, pairs: list[Any], cfg: TrainConfig, s: Sizes, device: torch.device,
               cached: bool, full_cfg: Config) -> dict[str, Any]:
    from components.train.moshi_policy import MoshiTextPolicy
    from components.train.optim import make_optimizer
    from components.train.step import score, train_step

    autocast = torch.bfloat16 if (cfg.autocast == "bf16" or (
        cfg.autocast == "auto" and device.type == "cuda")) else None
    policy = MoshiTextPolicy(copy.deepcopy(lm0).to(device), cfg)
    ref_lm = copy.deepcopy(lm0).to(device).requires_grad_(False)
    ref_policy = MoshiTextPolicy(ref_lm, cfg)
    batch = policy.collate(pairs)
    optimizer = make_optimizer(policy.param_groups(), cfg)
    cached_ref = score(ref_policy, batch, autocast_dtype=autocast)
    try:
        def step() -> Any:
            ref = cached_ref if cached else score(ref_policy, batch, autocast_dtype=autocast)
            return train_step(policy, optimizer, [batch], [ref], cfg, autocast_dtype=autocast)

        step()  # warm-up
        _sync(device)
        with OtherLoad(full_cfg) as load:
            t0 = time.perf_counter()
            for _ in range(s.moshi_steps):
                m = step()
            _sync(device)
            wall = time.perf_counter() - t0
    finally:
        policy.close()
        ref_policy.close()
    frames = m.positions * s.moshi_steps
    return {"frames_per_s": frames / wall, "flops_per_frame": policy.train_flops_per_position(),
            "loss": m.loss, "other_load": load.share}


def moshi_leg(cfg: Config, s: Sizes, device: torch.device) -> dict[str, Any]:
    from components.model.spec import build_lm, count_params, lm_kwargs
    from components.streams.interleave import StreamLayout

    embedded = cfg.streams.codec_source == "embedded"
    layout = StreamLayout(num_codebooks=cfg.streams.num_codebooks,
                          text_card=cfg.streams.tokenizer_vocab_size if embedded else 32000,
                          card=256 if embedded else 2048)
    # T <= context keeps the causal-attention fast path (components/train/attention.py).
    lm0 = build_lm(lm_kwargs(s.moshi_size, layout, max(s.frames, 64)), cfg.train.seed)
    pairs = moshi_pairs(layout, s, cfg.train.seed)
    base = cfg.train.model_copy(update={"lora": False, "gradient_checkpointing": False})
    say(f"Moshi leg: {s.moshi_size} LM ({count_params(lm0) / 1e6:.2f} M params, "
        f"q={layout.num_codebooks}), {s.moshi_pairs} pairs x {s.frames} frames per step, "
        f"{s.moshi_steps} timed steps, {device}")
    runs = {}
    for name, stream, cached in (("text", "text", True), ("joint", "joint", True),
                                 ("text_uncached", "text", False)):
        say(f"  {name}")
        runs[name] = _moshi_run(lm0, pairs, base.model_copy(update={"stream": stream}), s,
                                device, cached, cfg)
    text, joint, unc = runs["text"], runs["joint"], runs["text_uncached"]
    return {
        "moshi_size": s.moshi_size, "moshi_params": count_params(lm0),
        "moshi_codebooks": layout.num_codebooks, "moshi_frames_per_pair": s.frames,
        "moshi_pairs_per_step": s.moshi_pairs, "moshi_timed_steps": s.moshi_steps,
        "moshi_optimizer": base.master_weights,
        "text_frames_per_s": round(text["frames_per_s"], 1),
        "joint_frames_per_s": round(joint["frames_per_s"], 1),
        "joint_vs_text": round(joint["frames_per_s"] / text["frames_per_s"], 3),
        "text_uncached_frames_per_s": round(unc["frames_per_s"], 1),
        "reference_cache_speedup": round(text["frames_per_s"] / unc["frames_per_s"], 3),
        "text_train_flops_per_frame": text["flops_per_frame"],
        "joint_train_flops_per_frame": joint["flops_per_frame"],
        "moshi_other_load": max((r["other_load"] or 0.0) for r in runs.values()),
    }


# ----------------------------------------------------------------------------- report


def run_train_bench(cfg: Config, quick: bool = False) -> dict[str, Any]:
    s = QUICK if quick else FULL
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = train_device(cfg.train)
    t0 = time.monotonic()
    cpu = torch.device("cpu")
    # On a shared box one measurement can land in a busy moment: the CPU peak is the best of
    # one before, between and after the legs (what this process can get at best).
    peaks = [peak_flops(cpu, s.matmul)]
    out: dict[str, Any] = {"bench": "train", "profile": cfg.profile, "quick": quick,
                           "device": str(device), "threads": torch.get_num_threads()}
    out.update(hf_leg(cfg, s))
    peaks.append(peak_flops(cpu, s.matmul))
    out.update(moshi_leg(cfg, s, device))
    peaks.append(peak_flops(cpu, s.matmul))
    cpu_peak, cpu_source = max(peaks)
    peak, source = (cpu_peak, cpu_source) if device.type == "cpu" else peak_flops(device, s.matmul)
    text_flops = out["text_train_flops_per_frame"] * out["text_frames_per_s"]
    joint_flops = out["joint_train_flops_per_frame"] * out["joint_frames_per_s"]
    out.update(cpu_peak_flops=cpu_peak, cpu_peak_source=cpu_source, peak_flops=peak,
               peak_source=source, ours_mfu=round(out["ours_flops_per_s"] / cpu_peak, 4),
               text_mfu=round(text_flops / peak, 4), joint_mfu=round(joint_flops / peak, 4),
               wall_s=round(time.monotonic() - t0, 1))
    return out


def report(f: dict[str, Any]) -> str:
    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    rows = [
        ["HF Llama (CPU, fp32)", f"{f['hf_params'] / 1e6:.1f} M params, vocab {f['hf_vocab']}, "
                                 f"head {pct(f['hf_head_share'])} of matmul params"],
        ["  pairs / step, timed steps", f"{f['hf_pairs_per_step']}, {f['hf_timed_steps']} "
                                        f"(completion {pct(f['hf_completion_share'])} of tokens)"],
        ["  ours tokens/s", fmt(f["ours_tokens_per_s"])],
        [f"  TRL {f['trl_version']} DPOTrainer tokens/s", fmt(f["trl_tokens_per_s"])],
        ["  ratio ours / TRL (target >= 1.3)", f"{f['speedup']:.2f}x"],
        ["  first-step loss ours / TRL", f"{f['ours_first_loss']:.6f} / {f['trl_first_loss']:.6f}"
                                         f" (diff {f['first_loss_diff']:.1e})"],
        ["  loss per step ours / TRL", f"{f['ours_losses'][-1]:.6f} / {f['trl_losses'][-1]:.6f}"
                                       f" at step {len(f['ours_losses'])} (max diff over steps "
                                       f"{f['loss_max_diff']:.1e})"],
        ["  same token ids in TRL", fmt(f["trl_same_token_ids"])],
        ["  ours MFU (CPU)", pct(f["ours_mfu"])],
        ["  other load ours / TRL", f"{fmt(f['ours_other_load'], '.2f')} / "
                                    f"{fmt(f['trl_other_load'], '.2f')}"],
        [f"Moshi {f['moshi_size']} ({f['device']})", f"{f['moshi_params'] / 1e6:.2f} M params, "
                                                     f"{f['moshi_pairs_per_step']} pairs x "
                                                     f"{f['moshi_frames_per_pair']} frames / step"],
        ["  text-only step frames/s", fmt(f["text_frames_per_s"])],
        ["  joint step frames/s", f"{fmt(f['joint_frames_per_s'])} "
                                  f"({f['joint_vs_text']:.2f}x text)"],
        ["  text step, reference in the step", f"{fmt(f['text_uncached_frames_per_s'])} "
                                               f"(cache: {f['reference_cache_speedup']:.2f}x)"],
        ["  MFU text / joint", f"{pct(f['text_mfu'])} / {pct(f['joint_mfu'])}"],
        ["peak FLOP/s", f"{f['peak_flops'] / 1e9:.1f} G ({f['peak_source']})"],
        ["bench wall", f"{f['wall_s']} s"],
    ]
    return "train bench\n" + table(["figure", "value"], rows)


def main(cfg: Config, args: argparse.Namespace | None = None) -> int:
    figures = run_train_bench(cfg, quick=bool(getattr(args, "quick", False)))
    emit(report(figures), figures)
    ok = figures["first_loss_equal"] and figures["losses_equal"] and figures["trl_same_token_ids"]
    return 0 if ok else 1


__all__ = ["FULL", "QUICK", "Sizes", "main", "run_train_bench"]
