"""Medusa-1 head training with the base model frozen (`trtbuild train-medusa`).

Head k (0-based) reads the base model's final hidden state h_t and predicts the token k + 2
positions ahead (the base model's own lm_head predicts t + 1). Heads are "version 2": ResBlocks
`x + silu(W x + b)` (W zero-initialised, so a fresh head repeats the base prediction) followed by
the base model's frozen lm_head; only the ResBlocks train, which keeps CPU training cheap.

Data never comes from the network. The default corpus is the Python standard library's own
sources (present on every machine). Two kinds of targets:
- `self` (self-distillation): sequences are the base model's greedy continuations of prompts cut
  from the corpus, so heads learn to predict what the model itself will generate;
- `corpus`: sequences are corpus text and targets its next tokens.
The base model runs once over the data (no grad); its hidden states and targets are cached in
`OUT/train/`, and training checkpoints there every `checkpoint_every` steps, so `--resume`
continues an interrupted run. The result is FasterDecoding's format: `medusa_lm_head.safetensors`
(keys `{h}.{l}.linear.weight|bias`) and a Medusa `config.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from trtbuild.common.corpus import corpus_prompts, split_files, stdlib_files
from trtbuild.common.errors import ConfigError
from trtbuild.runtime import Model, Request, generate
from trtbuild.runtime.generate import hidden_states
from trtbuild.runtime.model import PLAIN

HEAD_FILE = "medusa_lm_head.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    heads: int = 4
    layers: int = 1
    steps: int = 1500
    lr: float = 1e-3
    batch: int = 64  # positions per step (each trains every head)
    targets: Literal["self", "corpus"] = "self"
    sequences: int = 160  # training sequences
    prompt_tokens: int = 32  # corpus tokens that start a self-distillation sequence
    seq_tokens: int = 160  # tokens per sequence (self: prompt + greedy continuation)
    seed: int = 0
    checkpoint_every: int = 250
    # Medusa-2 (`joint`, tuning/joint.py): the base trains too
    joint: bool = False
    base_lr: float = 1e-5
    warmup: int = 50  # steps that train the heads alone first
    kl_weight: float = 1.0  # the base's self-distillation term
    head_decay: float = 0.8  # head k's loss weight: head_decay ** k
    joint_batch: int = 4  # sequences per step
    init_heads: str | None = None  # --joint: start from these trained (version-2) heads, e.g. Medusa-1's

    def __post_init__(self) -> None:
        for name in ("heads", "layers", "steps", "batch", "sequences", "checkpoint_every", "joint_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train-medusa: {name} must be >= 1")
        if self.seq_tokens <= self.prompt_tokens + self.heads + 1:
            raise ConfigError("train-medusa: seq_tokens must exceed prompt_tokens + heads + 1")
        if self.joint and self.targets != "self":
            raise ConfigError("train-medusa --joint trains on the model's own continuations: use --targets self")
        if not (self.base_lr > 0 and self.kl_weight >= 0 and 0 < self.head_decay <= 1 and self.warmup >= 0):
            raise ConfigError("train-medusa: base_lr > 0, kl_weight >= 0, 0 < head_decay <= 1, warmup >= 0")
        if self.init_heads is not None and not self.joint:
            raise ConfigError("train-medusa: --init-heads starts a --joint run from trained heads; add --joint")


def build_dataset(model: Model, tok, files: list[Path], cfg: TrainConfig,
                  progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [N, H] (fp32) and targets [N, heads] (token ids, -100 = none)."""
    if cfg.targets == "self":
        prompts = corpus_prompts(files, tok, cfg.sequences, cfg.prompt_tokens, cfg.seed)
        seqs, first = self_distill_sequences(model, prompts, cfg.seq_tokens, progress)
    else:
        seqs = corpus_prompts(files, tok, cfg.sequences, cfg.seq_tokens, cfg.seed)
        first = [0] * len(seqs)
    return dataset_from_sequences(model, seqs, first, cfg.heads)


def self_distill_sequences(model: Model, prompts: list[list[int]], seq_tokens: int,
                           progress: bool = True) -> tuple[list[list[int]], list[int]]:
    """Each prompt + the model's greedy continuation up to `seq_tokens`; and the index of the
    last prompt token, from which on the sequence is the model's own."""
    from tqdm import tqdm

    seqs, first = [], []
    for i in tqdm(range(0, len(prompts), 16), desc="self-distillation: greedy continuations", unit="batch",
                  disable=not progress):
        batch = prompts[i:i + 16]  # decoding is bandwidth-bound: 16 rows cost little more than 1
        res = generate(model, [Request(tuple(p), max(seq_tokens - len(p), 1)) for p in batch])
        for p, r in zip(batch, res):
            seqs.append(list(p) + list(r.output_ids))
            first.append(len(p) - 1)
    return seqs, first


def dataset_from_sequences(model: Model, seqs: list[list[int]], first: list[int],
                           heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of every sequence position from `first[i]` on, and what each head must predict
    there: head k at position t predicts seq[t + k + 2]."""
    hs, ts = [], []
    for seq, f in zip(seqs, first):
        h = hidden_states(model, seq)  # [T, H]
        T = len(seq)
        tgt = torch.full((T, heads), -100, dtype=torch.long)
        ids = torch.tensor(seq)
        for k in range(heads):
            if T > k + 2:
                tgt[: T - k - 2, k] = ids[k + 2:]
        hs.append(h[f:])
        ts.append(tgt[f:])
    return torch.cat(hs), torch.cat(ts)


class Heads(torch.nn.Module):
    """K heads of L ResBlocks each; logits through a frozen, shared lm_head."""

    def __init__(self, hidden: int, heads: int, layers: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(heads, layers, hidden, hidden))
        self.b = torch.nn.Parameter(torch.zeros(heads, layers, hidden))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, H] -> per-head hidden states [N, K, H]."""
        x = h[:, None, :].expand(-1, self.w.shape[0], -1)
        for j in range(self.w.shape[1]):
            x = x + F.silu(torch.einsum("nkh,kgh->nkg", x, self.w[:, j]) + self.b[:, j])
        return x

    def state(self) -> dict[str, torch.Tensor]:
        """FasterDecoding version-2 keys: {h}.{l}.linear.weight [H, H] (out, in) and .bias."""
        out = {}
        for h in range(self.w.shape[0]):
            for j in range(self.w.shape[1]):
                out[f"{h}.{j}.linear.weight"] = self.w[h, j].detach().clone().contiguous()
                out[f"{h}.{j}.linear.bias"] = self.b[h, j].detach().clone().contiguous()
        return out


def load_training_state(ckpt: Path, parts: dict) -> int:
    """Restore every object of `parts` (name -> module, optimizer or schedule) from the checkpoint
    `ckpt` (weights only, never unpickled code); returns the step it was saved at."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    for name, obj in parts.items():
        obj.load_state_dict(state[name])
    return int(state["step"])


def save_training_state(ckpt: Path, parts: dict, step: int) -> None:
    """Write `parts`' state dicts and `step` to `ckpt` atomically (a killed run leaves the previous one)."""
    tmp = ckpt.with_suffix(".tmp")
    torch.save({**{name: obj.state_dict() for name, obj in parts.items()}, "step": step}, tmp)
    os.replace(tmp, ckpt)


def train_heads(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.Tensor, cfg: TrainConfig,
                work: Path, resume: bool, progress: bool = True, stop_at: int | None = None) -> Heads:
    """Train on cached (hidden, targets); checkpoints in `work`. lm_head: [V, H] frozen.

    `stop_at` ends this run early (the schedule still spans cfg.steps), like an interruption.
    """
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    heads = Heads(hidden.shape[1], cfg.heads, cfg.layers)
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / cfg.steps))
    step = 0
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.pt"
    parts = {"heads": heads, "opt": opt, "sched": sched}
    if resume and ckpt.is_file():
        step = load_training_state(ckpt, parts)
    bar = tqdm(total=cfg.steps, initial=step, desc="train-medusa", unit="step", disable=not progress)
    valid = (targets >= 0).any(1).nonzero()[:, 0]
    while step < min(cfg.steps, stop_at or cfg.steps):
        # the batch is a function of (seed, step): a resumed run continues exactly as an unbroken one
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = valid[torch.randint(len(valid), (cfg.batch,), generator=gen)]
        x = heads(hidden[idx])  # [B, K, H]
        logits = F.linear(x.flatten(0, 1), lm_head)  # [B*K, V]: one 2-D GEMM (a 3-D matmul would be B GEMVs)
        loss = F.cross_entropy(logits, targets[idx].flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % cfg.checkpoint_every == 0 or step in (cfg.steps, stop_at):
            save_training_state(ckpt, parts, step)
    bar.close()
    return heads


def head_accuracy(heads: Heads, hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.Tensor,
                  top_k: int = 10) -> torch.Tensor:
    """[K, top_k]: fraction of positions where head k's target is within its top-(j+1) tokens."""
    hits = torch.zeros(heads.w.shape[0], top_k)
    counts = torch.zeros(heads.w.shape[0])
    with torch.no_grad():
        for i in range(0, len(hidden), 256):
            x = heads(hidden[i:i + 256])
            top = F.linear(x, lm_head).topk(top_k, dim=-1).indices  # [B, K, top_k]
            t = targets[i:i + 256]
            ok = t >= 0
            match = (top == t[..., None]).cumsum(-1).clamp(max=1).float()  # [B, K, top_k]
            hits += (match * ok[..., None]).sum(0)
            counts += ok.sum(0)
    return hits / counts.clamp(min=1)[:, None]


def save_heads(out_dir: Path, heads: Heads, cfg: TrainConfig, base: Path, vocab_size: int, extra: dict) -> None:
    """Write FasterDecoding's layout: medusa_lm_head.safetensors + config.json (each atomically)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (HEAD_FILE + ".tmp")
    save_file(heads.state(), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out_dir / HEAD_FILE)
    config = {"medusa_num_heads": cfg.heads, "medusa_num_layers": cfg.layers, "version": "2",
              "base_model_name_or_path": str(base), "hidden_size": int(heads.w.shape[-1]),
              "vocab_size": vocab_size, "trtbuild": {"train_config": asdict(cfg), **extra}}
    (out_dir / "config.json.tmp").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(out_dir / "config.json.tmp", out_dir / "config.json")


HEADS_KIND = "medusa-heads"  # the marker kind of train-medusa's output


HELD_OUT = dict(n=16, length=128, seed=321)  # base_quality's held-out text: the stdlib's held-out files


def held_out_sequences(tok) -> list[list[int]]:
    """The held-out text the base-quality report reads (plain text, no chat template)."""
    return corpus_prompts(split_files(stdlib_files())[1], tok, HELD_OUT["n"], HELD_OUT["length"],
                          HELD_OUT["seed"], chat=False)


def train_medusa(hf_dir: Path, out_dir: Path, cfg: TrainConfig, corpus: list[Path] | None = None,
                 resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Train heads for the HF model at `hf_dir` into `out_dir` (with cfg.joint, fine-tune the base
    too: a Medusa-2 model); returns a summary (loss, accuracy, base quality)."""
    import tempfile

    from safetensors.torch import load_file, save_file

    from trtbuild.convert import convert
    from trtbuild.common.fsutil import MARKER, check_inputs, check_output_dir, marker_kind
    from trtbuild.runtime.tokenizer import load_tokenizer
    from trtbuild.tuning.joint import base_quality

    out_dir = Path(out_dir)
    work = out_dir / "train"
    inputs = [hf_dir, *(corpus or ()), *([Path(cfg.init_heads)] if cfg.init_heads else [])]
    check_inputs(out_dir, inputs)  # resuming too: the heads never overwrite the model or the corpus
    if not (resume and work.is_dir()):
        check_output_dir(out_dir, force, kind=HEADS_KIND, inputs=inputs)
    elif marker_kind(out_dir) != HEADS_KIND:
        raise ConfigError(f"cannot resume in {out_dir}: it was not written by trtbuild train-medusa")
    files = list(corpus) if corpus else split_files(stdlib_files())[0]
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"corpus file(s) not found: {', '.join(missing[:3])}")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = convert(Path(hf_dir), Path(tmp) / "ckpt", dtype="float32")
        model = Model.load(ckpt, dtype="float32", device="cpu")
        tok = load_tokenizer(ckpt)
        if cfg.init_heads is not None:  # fail before anything is written or computed
            from trtbuild.tuning.joint import init_heads

            init_heads(Heads(model.cfg.dims.hidden_size, cfg.heads, cfg.layers), Path(cfg.init_heads))
        if out_dir.exists() and not resume:
            import shutil

            shutil.rmtree(out_dir)
        work.mkdir(parents=True, exist_ok=True)
        (out_dir / MARKER).write_text(json.dumps({"kind": HEADS_KIND, "written_by": "train-medusa"}) + "\n")
        held = held_out_sequences(tok)
        if cfg.joint:
            from trtbuild.tuning.joint import write_medusa2

            return write_medusa2(Path(hf_dir), out_dir, cfg, model, tok, files, held, resume, progress)
        data = work / f"data-{cfg.targets}-{cfg.heads}-{cfg.sequences}-{cfg.seq_tokens}-{cfg.seed}.safetensors"
        if data.is_file():
            d = load_file(str(data))
            hidden, targets = d["hidden"], d["targets"]
        else:
            hidden, targets = build_dataset(model, tok, files, cfg)
            save_file({"hidden": hidden.contiguous(), "targets": targets.contiguous()}, str(data))
        lm_head = model.lm_head.w if model.backend == PLAIN else None
        if lm_head is None:  # packed (the kernel's or oneDNN's layout): take the plain weight from the checkpoint again
            from trtbuild.runtime.checkpoint import load_weights

            lm_head = load_weights(ckpt, model.cfg, torch.float32).lm_head
        heads = train_heads(hidden, targets, lm_head, cfg, work, resume, progress)
        acc = head_accuracy(heads, hidden[-4096:], targets[-4096:], lm_head)
        summary = {"positions": int(len(hidden)), "train_top1": [round(float(a), 4) for a in acc[:, 0]],
                   "train_top5": [round(float(a), 4) for a in acc[:, 4]],
                   "base_quality": base_quality(lambda ids: runtime_logits(model, ids), None, held)}
        save_heads(out_dir, heads, cfg, Path(hf_dir).resolve(), model.cfg.dims.vocab_size, summary)
    return summary


def runtime_logits(model: Model, ids: torch.Tensor) -> torch.Tensor:
    """ids [1, T] -> the runtime model's logits [1, T, V] (one prefill)."""
    T = ids.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    return model.forward(ids, torch.arange(T)[None], model.new_cache(1, T), 0, mask)
