"""The measured cost of a forward pass: step time as a function of the batch's total tokens.

`calibrate(model, max_tokens)` times a few decode-shaped forwards (rows of one token, then rows of
several, up to `max_tokens` in all) and keeps the medians as knots of a piecewise-linear curve, plus
one pass of the Medusa heads when the model has them; `CostModel.step_time(tokens)` interpolates
between knots and extrapolates the last segment. `observe(tokens, seconds)` and
`observe_heads(seconds)` keep it current from live steps (exponential averages; a step's tokens are
its rows times its padded width, what the reference runtime computes). The curve is cached next to
the engine with the machine and the engine it was measured on (`save` / `load`; `engine_digest`): a
cache from another machine or engine is refused, never silently used (`for_engine` then measures anew).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from bisect import bisect_left
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from trtbuild.common.errors import ConfigError

CACHE = "trtbuild.cost.json"


@dataclass(frozen=True)
class CostModel:
    tokens: tuple[int, ...]  # [K] total tokens of a step, increasing
    seconds: tuple[float, ...]  # [K] measured step time at each
    machine: str  # machine_id() it was measured on
    engine: str  # what it was measured for (an engine digest)
    heads: float = 0.0  # seconds of one Medusa heads pass (0: no heads)

    def __post_init__(self) -> None:
        if len(self.tokens) < 2 or len(self.tokens) != len(self.seconds):
            raise ConfigError("a cost model needs two or more (tokens, seconds) knots")
        if any(b <= a for a, b in zip(self.tokens, self.tokens[1:])) or min(self.seconds) <= 0:
            raise ConfigError("cost model knots must have increasing tokens and positive times")

    def step_time(self, tokens: int) -> float:
        """Seconds of one step over `tokens` tokens (piecewise linear; the end segments extrapolate,
        never below the first knot's time)."""
        xs, ys = self.tokens, self.seconds
        i = min(max(bisect_left(xs, tokens), 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(y0 + (y1 - y0) * (tokens - x0) / (x1 - x0), ys[0] if tokens <= xs[0] else 0.0, 1e-9)

    def observe(self, tokens: int, seconds: float, weight: float = 0.1, overall: float = 0.02) -> CostModel:
        """The model after a live step: every knot moves `overall` of the way to the ratio seen /
        predicted (what slows every step alike: another process on the cores, a clock change; without
        it the knots a loaded server visits drift up while the ones it does not visit stay idle-fast,
        and wide steps look cheap), then the nearest knot `weight` of the way to what was seen (scaled
        to the knot by the curve's own slope there)."""
        ratio = seconds / self.step_time(tokens)
        ys = [y * (1 + overall * (ratio - 1)) for y in self.seconds]
        moved = replace(self, seconds=tuple(ys))
        i = min(range(len(self.tokens)), key=lambda k: abs(self.tokens[k] - tokens))
        seen = seconds * moved.step_time(self.tokens[i]) / moved.step_time(tokens)
        ys[i] = (1 - weight) * ys[i] + weight * seen
        return replace(self, seconds=tuple(ys))

    def observe_heads(self, seconds: float, weight: float = 0.1) -> CostModel:
        return replace(self, heads=(1 - weight) * self.heads + weight * seconds)

    def to_dict(self) -> dict:
        return {"tokens": list(self.tokens), "seconds": list(self.seconds), "heads": self.heads,
                "machine": self.machine, "engine": self.engine}


def linears_id(model) -> str:
    """How the model's linears run (Model.backend; the runtime's kernel with its source digest)."""
    from trtbuild.runtime import kernels

    return f"{model.backend} {kernels.digest()}" if model.backend == "kernel" else model.backend


def machine_id(device: str = "cpu", linears: str = "") -> str:
    """What a step time depends on besides the engine: processor, threads, torch, device, and how
    the linears run (`linears_id`: a new kernel is a new machine as far as the curve goes)."""
    from trtbuild.runtime.kernels import cpuinfo

    cpu = cpuinfo("model name") or platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if str(device).startswith("cuda") and torch.cuda.is_available() else ""
    return f"{cpu} | {os.cpu_count()} cpus | {torch.get_num_threads()} threads | torch {torch.__version__} | {device}" \
        + (f" | {gpu}" if gpu else "") + (f" | linears {linears}" if linears else "")


def save(cost: CostModel, engine_dir: Path) -> Path:
    path = Path(engine_dir) / CACHE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cost.to_dict(), indent=2) + "\n")
    tmp.replace(path)
    return path


def load(engine_dir: Path, machine: str, engine: str) -> CostModel:
    """The cached curve of `engine_dir`; ConfigError when there is none, or it was measured on another
    machine or for another engine."""
    path = Path(engine_dir) / CACHE
    try:
        d = json.loads(path.read_text())
        cost = CostModel(tuple(int(t) for t in d["tokens"]), tuple(float(s) for s in d["seconds"]),
                         str(d["machine"]), str(d["engine"]), float(d["heads"]))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no cost calibration") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a cost calibration ({type(e).__name__}: {e})") from None
    if cost.machine != machine:
        raise ConfigError(f"{path} was measured on another machine ({cost.machine}), not this one ({machine})")
    if cost.engine != engine:
        raise ConfigError(f"{path} was measured for another engine ({cost.engine}), not {engine}")
    return cost


def knots(max_tokens: int) -> tuple[int, ...]:
    """Token totals to time: 1, 2, 4, ... up to max_tokens (always included)."""
    out, t = [], 1
    while t < max_tokens:
        out.append(t)
        t *= 2
    return tuple(out + [max_tokens]) if max_tokens > 1 else (1, 2)


@torch.inference_mode()
def calibrate(model, max_tokens: int, engine: str, repeats: int = 3, context: int = 64) -> CostModel:
    """Time a step of each knot's total tokens (as rows of one token up to 8 rows, then 8 rows of
    several tokens, each row over `context` cached tokens); medians of `repeats`, after a warm-up."""
    from trtbuild.runtime.decoding import draft_attention_mask
    from trtbuild.runtime.model import KVCache

    dev, seconds, totals = model.device, [], knots(max_tokens)
    rows = min(8, totals[-1])
    cache = model.new_cache(rows, context + max(1, -(-totals[-1] // rows)) + 1)
    for total in totals:
        B = min(rows, total)
        T = -(-total // B)  # tokens per row (the last knot may round up a little)
        tokens = torch.zeros(B, T, dtype=torch.long, device=dev)
        lens = torch.full((B,), context, dtype=torch.long, device=dev)
        depths = torch.arange(T, device=dev)[None].expand(B, T)
        local = torch.tril(torch.ones(T, T, dtype=torch.bool, device=dev))[None].expand(B, T, T)
        mask = draft_attention_mask(local, depths, lens, context + T, model.cfg.sliding_window)
        slots = lens[:, None] + torch.arange(T, device=dev)[None]
        view = KVCache(cache.k[:, :B], cache.v[:, :B])

        def step() -> float:
            t0 = time.perf_counter()
            model.logits(model.hidden(tokens, lens[:, None] + depths, view, slots, mask))
            if str(dev).startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        step()  # warm-up: first-call allocations, kernel selection
        seconds.append(statistics.median(step() for _ in range(repeats)))
    # a step never gets cheaper with more tokens: noise must not make the curve dip
    mono = [seconds[0]]
    for s in seconds[1:]:
        mono.append(max(s, mono[-1]))
    heads = 0.0
    if model.medusa:
        h = torch.zeros(rows, model.cfg.dims.hidden_size, dtype=model.dtype, device=dev)

        def heads_pass() -> float:
            t0 = time.perf_counter()
            model.medusa_logits(h).topk(8, dim=-1)
            if str(dev).startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        heads_pass()
        heads = statistics.median(heads_pass() for _ in range(repeats))
    return CostModel(totals, tuple(mono), machine_id(str(dev), linears_id(model)), engine, heads)


def engine_digest(engine_dir: Path) -> str:
    """What identifies an engine's step cost: its config.json and its weight files' names and sizes
    (sha256, 16 hex digits; the weights are not read)."""
    import hashlib

    root = Path(engine_dir)
    h = hashlib.sha256((root / "config.json").read_bytes())
    manifest = root / "trtbuild.json"
    weights = root
    if manifest.is_file():  # the torch backend's engine points at its checkpoint
        ckpt = json.loads(manifest.read_text()).get("checkpoint")
        if isinstance(ckpt, str):
            weights = (root / ckpt).resolve()
    for f in sorted(weights.glob("*.safetensors")) + sorted(root.glob("*.engine")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def for_engine(model, engine_dir: Path, max_tokens: int, log=print) -> CostModel:
    """The engine's cached calibration when it was measured on this machine for this engine, else a
    new one, measured now and cached (a read-only engine directory keeps it in memory only)."""
    machine, digest = machine_id(str(model.device), linears_id(model)), engine_digest(engine_dir)
    try:
        return load(engine_dir, machine, digest)
    except ConfigError as e:
        log(f"trtbuild: calibrating the step cost ({e})")
    t0 = time.perf_counter()
    cost = calibrate(model, max_tokens, digest)
    try:
        save(cost, engine_dir)
    except OSError as e:
        log(f"trtbuild: cost calibration not cached ({e.strerror or e})")
    log(f"trtbuild: step cost calibrated in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{t} tok {s * 1e3:.0f} ms" for t, s in zip(cost.tokens, cost.seconds)))
    return cost
