"""Medusa-2: the base model and its heads fine-tuned together (`trtbuild train-medusa --joint`).

The recipe of the Medusa paper (Cai et al. 2024, §2.3.2), on a CPU budget:
- every parameter trains: the base at a low learning rate (`base_lr`, ~1e-5), the heads at a high
  one (`lr`, ~1e-3), one warm-up/decay schedule for both; the first `warmup` steps train the heads
  alone (the base frozen, so the heads' fresh gradients do not disturb it);
- the base keeps its capabilities by self-distillation: its own next-token loss is the KL divergence
  from a frozen copy of the original model's distribution on the same text (the training text is
  the original model's greedy continuations of corpus prompts, as for Medusa-1 `self` targets);
- head k's cross-entropy (it predicts token t + k + 2) is weighted by `head_decay` ** k: the deep,
  less reliable heads pull the shared base less.

`base_quality` is the report train-medusa writes for both recipes (and `build` checks): on
held-out corpus text, the tuned base's top-1 agreement with the original and both perplexities.
Models here are Hugging Face `*ForCausalLM` modules in fp32 (trained in place); nothing reaches the
network. Resume is bit-exact: the batch is a function of (seed, step), and the checkpoint holds the
tuned base, the heads, the optimizer and the schedule.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from trtbuild.tuning.train_medusa import Heads, TrainConfig, load_training_state, save_training_state


def head_targets(ids: torch.Tensor, first: torch.Tensor, length: torch.Tensor, heads: int) -> torch.Tensor:
    """ids [B, T] (row b real up to length[b]), first [B] (index of the last prompt token) -> targets
    [B, T, K]: head k at t predicts ids[t + k + 2]; -100 before `first` (the prompt is corpus text, not
    the model's own) and where t + k + 2 is past the row's end."""
    B, T = ids.shape
    tgt = torch.full((B, T, heads), -100, dtype=torch.long)
    pos = torch.arange(T)[None, :]  # [1, T]
    for k in range(heads):
        if T > k + 2:
            tgt[:, : T - k - 2, k] = ids[:, k + 2:]
        tgt[..., k][pos + k + 2 >= length[:, None]] = -100
    tgt[(pos < first[:, None]).expand(B, T)] = -100
    return tgt


def joint_loss(student, teacher, heads: Heads, ids: torch.Tensor, first: torch.Tensor, length: torch.Tensor,
               cfg: TrainConfig, base_frozen: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """The Medusa-2 loss of one batch ids [B, T] (row b real up to length[b]): kl_weight *
    KL(teacher || student) averaged over the real positions + the depth-weighted head cross-entropies;
    with `base_frozen` the heads' loss alone."""
    lm_head = student.get_output_embeddings().weight  # [V, H]
    if base_frozen:
        with torch.no_grad():
            h = student.base_model(input_ids=ids).last_hidden_state  # [B, T, H], after the final norm
        lm_head = lm_head.detach()
    else:
        h = student.base_model(input_ids=ids).last_hidden_state
    tgt = head_targets(ids, first, length, cfg.heads).flatten(0, 1)  # [B*T, K]
    rows = (tgt >= 0).any(1).nonzero()[:, 0]
    x = heads(h.flatten(0, 1)[rows])  # [N, K, H]
    logits = F.linear(x, lm_head)  # [N, K, V]
    weights = [cfg.head_decay ** k for k in range(cfg.heads)]
    per_head = [F.cross_entropy(logits[:, k], tgt[rows, k], ignore_index=-100) for k in range(cfg.heads)]
    heads_loss = sum(w * loss for w, loss in zip(weights, per_head)) / sum(weights)
    stats = {"heads": float(heads_loss.detach())}
    if base_frozen:
        return heads_loss, stats
    with torch.no_grad():
        t_logp = F.log_softmax(teacher(input_ids=ids).logits.float(), dim=-1).flatten(0, 1)  # [B*T, V]
    s_logp = F.log_softmax(F.linear(h, lm_head), dim=-1).flatten(0, 1)  # [B*T, V]
    real = (torch.arange(ids.shape[1])[None, :] < length[:, None]).flatten()  # [B*T]
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)[real].mean()  # KL(p_teacher || p_student) per position
    stats["kl"] = float(kl.detach())
    return cfg.kl_weight * kl + heads_loss, stats


def init_heads(heads: Heads, path: Path) -> None:
    """Copy trained version-2 heads (a train-medusa output, a head file or a Medusa-2 model) into
    `heads`; their head count, layer count and hidden size must be `heads`'."""
    from trtbuild.common.errors import ConfigError
    from trtbuild.convert.medusa_heads import read_heads

    src = read_heads(path)
    K, L, H = heads.w.shape[:3]
    if src.has_lm_head:
        raise ConfigError(f"--init-heads {path}: these heads have their own lm_head (Medusa-1 legacy); "
                          "--joint trains version-2 heads (logits through the base's lm_head)")
    if (src.num_heads, src.num_layers, src.hidden_size) != (K, L, H):
        raise ConfigError(f"--init-heads {path}: {src.num_heads} heads x {src.num_layers} layers of hidden "
                          f"{src.hidden_size}, but this run trains {K} x {L} of hidden {H} (--heads/--layers)")
    with torch.no_grad():
        for k in range(K):
            for j in range(L):
                heads.w[k, j].copy_(src.tensors[f"medusa.{k}.{j}.linear.weight"])
                heads.b[k, j].copy_(src.tensors[f"medusa.{k}.{j}.linear.bias"])


def train_joint(student, teacher, seqs: list[list[int]], first: list[int], cfg: TrainConfig, work: Path,
                resume: bool, progress: bool = True, stop_at: int | None = None) -> Heads:
    """Fine-tune `student` (in place) and train its heads on `seqs` (each cut to cfg.seq_tokens);
    `teacher` is the frozen original. Checkpoints in `work`; `stop_at` ends early like an interruption."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    H = student.get_output_embeddings().weight.shape[1]
    heads = Heads(H, cfg.heads, cfg.layers)
    if cfg.init_heads is not None:
        init_heads(heads, Path(cfg.init_heads))
    teacher.eval().requires_grad_(False)
    student.train()  # (no dropout in the families trtbuild converts: train mode changes nothing else)
    opt = torch.optim.AdamW([{"params": list(student.parameters()), "lr": cfg.base_lr},
                             {"params": list(heads.parameters()), "lr": cfg.lr}], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / cfg.steps))
    step = 0
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "joint.pt"
    parts = {"student": student, "heads": heads, "opt": opt, "sched": sched}
    if resume and ckpt.is_file():
        step = load_training_state(ckpt, parts)
    T = cfg.seq_tokens
    ids_all = torch.tensor([(s + [s[-1]] * T)[:T] for s in seqs])  # [S, T]: short ones padded (masked in the loss)
    lengths = torch.tensor([min(len(s), T) for s in seqs])
    firsts = torch.tensor(first)
    bar = tqdm(total=cfg.steps, initial=step, desc="train-medusa --joint", unit="step", disable=not progress)
    while step < min(cfg.steps, stop_at or cfg.steps):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(len(seqs), (cfg.joint_batch,), generator=gen)
        loss, stats = joint_loss(student, teacher, heads, ids_all[idx], firsts[idx], lengths[idx], cfg,
                                 base_frozen=step < cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
        if step % cfg.checkpoint_every == 0 or step in (cfg.steps, stop_at):
            save_training_state(ckpt, parts, step)
    bar.close()
    student.eval()
    return heads


@torch.no_grad()
def base_quality(original, tuned, seqs: list[list[int]]) -> dict:
    """On held-out token sequences: the tuned base's top-1 agreement with the original (teacher
    forced, every position) and both perplexities of the text's next tokens. `original` / `tuned`:
    callables ids [1, T] -> logits [1, T, V]; tuned None: the base is unchanged (Medusa-1)."""
    same = total = 0
    nll = {"original": 0.0, "tuned": 0.0}
    for s in seqs:
        ids = torch.tensor([s])
        a = original(ids)[0].float()  # [T, V]
        b = a if tuned is None else tuned(ids)[0].float()
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(s)
        nxt = ids[0, 1:]
        nll["original"] += float(F.cross_entropy(a[:-1], nxt, reduction="sum"))
        nll["tuned"] += float(F.cross_entropy(b[:-1], nxt, reduction="sum"))
    n = sum(len(s) - 1 for s in seqs)
    return {"held_out_sequences": len(seqs), "positions": total, "top1_agreement": round(same / max(total, 1), 4),
            "perplexity_original": round(math.exp(nll["original"] / n), 3),
            "perplexity_tuned": round(math.exp(nll["tuned"] / n), 3), "base_changed": tuned is not None}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "chat_template.jinja", "generation_config.json")


def write_medusa2(hf_dir: Path, out_dir: Path, cfg: TrainConfig, model, tok, files: list[Path],
                  held: list[list[int]], resume: bool, progress: bool = True) -> dict:
    """train-medusa --joint after its checks: self-distilled sequences from `model` (the runtime's
    fp32 original; cached in OUT/train for --resume), the joint run, the base-quality report, and the
    Medusa-2 directory: the tuned base as a HF model (fp32 weights; config.json's dtype stays the
    original's, so `build --dtype auto` builds what the original would) + `medusa_lm_head.safetensors`
    (version-2 heads: logits through the tuned lm_head), so `trtbuild OUT --medusa OUT` builds it."""
    import json
    import shutil
    import time
    from dataclasses import asdict

    import transformers
    from safetensors.torch import save_file

    from trtbuild.common.corpus import corpus_prompts
    from trtbuild.tuning.train_medusa import HEAD_FILE, head_accuracy, self_distill_sequences

    work = out_dir / "train"
    cached = work / f"seqs-{cfg.sequences}-{cfg.prompt_tokens}-{cfg.seq_tokens}-{cfg.seed}.json"
    if cached.is_file():
        data = json.loads(cached.read_text())
        seqs, first = data["seqs"], data["first"]
    else:
        prompts = corpus_prompts(files, tok, cfg.sequences, cfg.prompt_tokens, cfg.seed)
        seqs, first = self_distill_sequences(model, prompts, cfg.seq_tokens, progress)
        cached.with_suffix(".tmp").write_text(json.dumps({"seqs": seqs, "first": first}))
        os.replace(cached.with_suffix(".tmp"), cached)
    original_cfg = json.loads((hf_dir / "config.json").read_text())
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)  # noqa: E731
    student, teacher = load(), load().eval()
    t0 = time.perf_counter()
    heads = train_joint(student, teacher, seqs, first, cfg, work, resume, progress)
    seconds = round(time.perf_counter() - t0, 1)
    with torch.no_grad():
        quality = base_quality(lambda ids: teacher(input_ids=ids).logits, lambda ids: student(input_ids=ids).logits,
                               held)
        tail = torch.tensor([(s + [s[-1]] * cfg.seq_tokens)[:cfg.seq_tokens] for s in seqs[-16:]])
        tgt = head_targets(tail, torch.tensor(first[-16:]), torch.tensor([min(len(s), cfg.seq_tokens)
                                                                           for s in seqs[-16:]]), cfg.heads)
        h = student.base_model(input_ids=tail).last_hidden_state.flatten(0, 1)  # [16*T, H]
        rows = (tgt.flatten(0, 1) >= 0).any(1)
        acc = head_accuracy(heads, h[rows], tgt.flatten(0, 1)[rows], student.get_output_embeddings().weight)
    summary = {"recipe": "medusa-2", "sequences": len(seqs), "seconds": seconds,
               "train_top1": [round(float(a), 4) for a in acc[:, 0]],
               "train_top5": [round(float(a), 4) for a in acc[:, 4]], "base_quality": quality}
    student.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(hf_dir / name, out_dir / name)
    tmp = out_dir / (HEAD_FILE + ".tmp")
    save_file(heads.state(), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out_dir / HEAD_FILE)
    config = json.loads((out_dir / "config.json").read_text())
    dtype = original_cfg.get("dtype") or original_cfg.get("torch_dtype")
    config.update({"medusa_num_heads": cfg.heads, "medusa_num_layers": cfg.layers,
                   "trtbuild": {"train_config": asdict(cfg), "base_model_name_or_path": str(hf_dir.resolve()),
                                **summary}})
    if dtype:
        config["dtype"] = dtype
    (out_dir / "config.json.tmp").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(out_dir / "config.json.tmp", out_dir / "config.json")
    return summary
