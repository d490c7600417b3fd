"""In-flight (continuous) batching for the reference runtime.

A fixed KV cache of `max_batch_size` rows; each running request owns one row (slot == position),
and the running requests always hold rows 0..n-1 (a finished request's row is refilled by moving
the last row's KV into it), so a step computes exactly the n running rows. Every `step()`:
1. admission (guaranteed no evict): waiting requests take free rows, in arrival order, while the
   step's token budget (`max_num_tokens`) allows; a row holds prompt + max_new_tokens + one step's
   drafts, so every admitted request can finish. Each is prefilled alone into its row (a view of
   the cache) and emits its first token at once;
2. one forward pass over the running rows: per request its step tokens (plain: the last token;
   Medusa: the tree; lookahead: window + n-grams), padded to the longest row, each row with its own
   lengths, positions and mask;
3. verification per row (the model's own choice at each node, along the first matching draft
   chain), accepted KV entries kept, tokens delivered through the request's callback; finished and
   cancelled requests leave at once and free their rows.
Plain, Medusa and lookahead requests of one engine share the batch. Greedy output equals plain
greedy decoding token for token; sampled requests draw each emitted token from the model.
`serve_forever` runs the loop in a thread for servers; `run_until_idle` serves scripts and tests.

Per-request rules (TensorRT-LLM's executor, `trtbuild.runtime.sampling.TokenPicker`): repetition /
presence / frequency penalties, `min_tokens` and `return_log_probs` hold in every mode, the
speculative ones included: verification walks the draft nodes in order and each node's token is
chosen by the request's own picker from that node's logits, with the counts (prompt + tokens emitted
before that node) and the generated-token count (min_tokens) as they stand at that node. Every
chosen token is emitted, so the picker sees exactly the sequence plain decoding would, and a
request's output equals its plain decoding's (greedy: token for token). The drafts themselves
(Medusa heads, lookahead window and pool) stay unpenalised guesses: only acceptance follows the rule.

Per job, `job_info(job_id)` (a `JobInfo`, also inside the job's callbacks) has the decode steps,
accepted and drafted tokens, the log probs of the tokens delivered so far (`log_probs[-len(new):]`
are the latest callback's) and their cumulative log prob, the perf timestamps of TensorRT-LLM's
RequestPerfMetrics and the KV cache blocks of the job's row (`JobInfo`).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from trtbuild.common.errors import GenerationError
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.runtime.generate import Request, Result, _stopped, validate
from trtbuild.runtime.lookahead import StepLayout, _local_mask, _RowState, longest_chain
from trtbuild.runtime.medusa import tree_buffers
from trtbuild.runtime.model import KVCache, Model
from trtbuild.runtime.sampling import TokenPicker
from trtbuild.runtime.speculative import draft_attention_mask, keep_path

# on_tokens(new_tokens, result): called from the scheduler thread with each step's new tokens;
# `result` is set (and new_tokens may be empty) exactly once, when the request is finished
Callback = Callable[[list[int], Result | None], None]

# TensorRT-LLM's KV cache block size: trtllm-build's tokens_per_block, 32, as trtbuild's engine
# build_config writes it (trtbuild/builder/engine.py plugin_config)
TOKENS_PER_BLOCK = 32


@dataclass(frozen=True)
class JobInfo:
    """A job's progress and the figures the C++ backend reports per request.

    Timestamps: nanoseconds of `time.monotonic_ns()`, the clock of upstream's RequestPerfMetrics
    (`TimePoint = std::chrono::time_point<std::chrono::steady_clock>`, which tensorrtllm_backend
    sends as `time_since_epoch()` in ns: model_instance_state.cc@c2e65b8:1275-1281, 1296-1300); 0 =
    not reached yet (upstream's default time point). arrival = submit, first_scheduled = admitted
    (its prefill starts), first_token / last_token = when the first / latest token was emitted (the
    latest is the last one once the job is finished).
    KV cache: the job's row holds prompt + max_new_tokens + one step's draft tokens, counted in blocks
    of `tokens_per_block` when it is admitted; nothing is reused (no prefix cache); 0 before admission."""

    steps: int  # decode steps (target forward passes after the prefill)
    accepted: int  # draft tokens accepted
    drafted: int  # draft tokens verified
    log_probs: tuple[float, ...]  # return_log_probs: one per token delivered so far, else ()
    cum_log_prob: float | None  # return_log_probs: their sum (and an end id's it stopped at), else None
    arrival_time_ns: int
    first_scheduled_time_ns: int
    first_token_time_ns: int
    last_token_time_ns: int
    kv_cache_alloc_new_blocks: int
    kv_cache_reused_blocks: int
    kv_cache_alloc_total_blocks: int


@dataclass
class _Job:
    id: int
    request: Request
    mode: str  # plain | medusa | lookahead
    lookahead: LookaheadSpec | None
    on_tokens: Callback
    picker: TokenPicker
    arrival_ns: int
    first_scheduled_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0
    kv_blocks: int = 0
    row: int = -1
    length: int = 0  # tokens in the row's cache
    outs: list[int] = field(default_factory=list)
    steps: int = 0
    accepted: int = 0
    drafted: int = 0
    done: str | None = None
    cancelled: bool = False
    h_last: torch.Tensor | None = None  # Medusa: hidden state of the last accepted token [H]
    la: _RowState | None = None

    def kept(self) -> int:
        """Output tokens so far (an end id the job stopped at is not one)."""
        return len(self.outs) - (self.done == "end_id")

    def result(self) -> Result:
        cum, lps = self.picker.report(len(self.outs), self.kept())
        return Result(tuple(self.outs[:self.kept()]), self.done or "length", self.steps, self.accepted, cum, lps)

    def info(self) -> JobInfo:
        cum, lps = self.picker.report(len(self.outs), self.kept())
        return JobInfo(self.steps, self.accepted, self.drafted, lps or (), cum, self.arrival_ns,
                       self.first_scheduled_ns, self.first_token_ns, self.last_token_ns, self.kv_blocks, 0,
                       self.kv_blocks)


@dataclass
class Stats:
    steps: int = 0
    admitted: int = 0
    joined_running_batch: int = 0  # admitted while other requests were mid-decode
    finished: int = 0
    cancelled: int = 0
    max_active: int = 0
    tokens_generated: int = 0
    active: int = 0
    waiting: int = 0
    history: deque = field(default_factory=lambda: deque(maxlen=1000))  # (time, active, step tokens)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history"} | {"recent_steps": list(self.history)[-20:]}


class Scheduler:
    def __init__(self, model: Model, max_batch_size: int = 8, max_seq_len: int | None = None,
                 max_num_tokens: int = 8192, medusa_choices=None, lookahead: LookaheadSpec | None = None,
                 normalize_log_probs: bool = False, tokens_per_block: int = TOKENS_PER_BLOCK) -> None:
        """normalize_log_probs: TensorRT-LLM's engine-wide option (`sampling.TokenPicker`);
        tokens_per_block: the block size of the KV cache figures in `JobInfo`."""
        self.model = model
        self.normalize_log_probs = normalize_log_probs
        if tokens_per_block < 1:
            raise GenerationError(f"tokens_per_block must be >= 1, got {tokens_per_block}")
        self.tokens_per_block = tokens_per_block
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.lookahead = lookahead or model.cfg.lookahead
        choices = medusa_choices or model.cfg.medusa_choices
        self.tree = tree_buffers(tuple(tuple(p) for p in choices)) if model.medusa and choices else None
        self.draft_tokens = (self.tree.num_nodes if self.tree else
                             self.lookahead.decoding_tokens if self.lookahead else 1)
        self.max_seq_len = max_seq_len or model.cfg.max_position_embeddings
        self.cache: KVCache = model.new_cache(max_batch_size, self.max_seq_len + self.draft_tokens + 1)
        self.waiting: deque[_Job] = deque()
        self.running: dict[int, _Job] = {}
        self.stats = Stats()
        self._ids = itertools.count()
        self._jobs: dict[int, _Job] = {}  # every job until its final callback has run
        self._cv = threading.Condition()
        self._stop = False

    # --- the public side (any thread) ---------------------------------------------------------

    def reserve_id(self) -> int:
        """An id for a request about to be submitted (so its callback can know it from the start)."""
        with self._cv:
            return next(self._ids)

    def submit(self, request: Request, on_tokens: Callback, mode: str | None = None,
               lookahead: LookaheadSpec | None = None, job_id: int | None = None) -> int:
        """Queue a request; returns its id. mode: plain | medusa | lookahead (default: the engine's)."""
        validate(self.model, [request], per_token_rules=True)
        if len(request.prompt) + request.max_new_tokens > self.max_seq_len:
            raise GenerationError(f"prompt ({len(request.prompt)} tokens) + max_tokens ({request.max_new_tokens}) "
                                  f"exceeds max_seq_len {self.max_seq_len}")
        mode = mode or ("medusa" if self.tree else "lookahead" if self.lookahead else "plain")
        if mode == "medusa" and self.tree is None:
            raise GenerationError("this engine has no Medusa heads")
        if mode == "lookahead":
            lookahead = lookahead or self.lookahead
            if lookahead is None:
                raise GenerationError("lookahead requested but neither the engine nor the request gives (W, N, G)")
            if self.lookahead is not None:
                self.lookahead.check_request(lookahead)
            if lookahead.decoding_tokens > self.draft_tokens:
                raise GenerationError(f"lookahead {lookahead.as_tuple()} needs {lookahead.decoding_tokens} tokens per "
                                      f"step; this engine was built for {self.draft_tokens}")
            if lookahead.max_ngram_size == 1:
                mode, lookahead = "plain", None
        elif mode != "plain" and mode != "medusa":
            raise GenerationError(f"unknown decoding mode {mode!r}")
        picker = request.picker(self.model.cfg.dims.vocab_size, self.model.device, self.normalize_log_probs)
        with self._cv:
            job = _Job(next(self._ids) if job_id is None else job_id, request, mode, lookahead, on_tokens,
                       picker, time.monotonic_ns())
            self.waiting.append(job)
            self._jobs[job.id] = job
            self._cv.notify_all()
            return job.id

    def cancel(self, job_id: int) -> bool:
        """Stop a request (a client went away); its row is freed at the next step. False if unknown."""
        with self._cv:
            for job in itertools.chain(self.waiting, self.running.values()):
                if job.id == job_id and not job.cancelled:
                    job.cancelled = True
                    self._cv.notify_all()
                    return True
        return False

    def progress(self, job_id: int) -> tuple[int, int, int]:
        """(decode steps, accepted draft tokens, draft tokens verified) of a job so far."""
        job = self._jobs.get(job_id)
        return (job.steps, job.accepted, job.drafted) if job is not None else (0, 0, 0)

    def job_info(self, job_id: int) -> JobInfo | None:
        """A job's `JobInfo` (from submit until its final callback has returned); None if unknown."""
        job = self._jobs.get(job_id)
        return job.info() if job is not None else None

    def run_forever(self) -> None:
        """The step loop, in the calling thread, until `shutdown()` (idle: waits for work).

        On CPU, run it in the thread that loaded the model: OpenMP keeps one thread team per
        thread, and a step loop whose model was packed from another thread ran 64 SmolLM2 tokens in
        1.52-1.60 s on a 2-core machine instead of 1.13-1.19 s."""
        while True:
            with self._cv:
                while not self._stop and not self.waiting and not self.running:
                    self._cv.wait()
                if self._stop:
                    return
            self.step()

    def serve_forever(self) -> threading.Thread:
        """Run `run_forever` in a daemon thread."""
        t = threading.Thread(target=self.run_forever, name="trtbuild-scheduler", daemon=True)
        t.start()
        return t

    def shutdown(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()

    def run_until_idle(self) -> None:
        while self.waiting or self.running:
            self.step()

    # --- the step loop --------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        with self._cv:
            for job in [j for j in self.waiting if j.cancelled]:
                self.waiting.remove(job)
                self._finish(job, "cancelled")
            for job in [j for j in self.running.values() if j.cancelled]:
                self._finish(job, "cancelled")
            admit = []
            budget = self.max_num_tokens - sum(self._step_tokens(j) for j in self.running.values())
            self._compact()
            while self.waiting and len(self.running) + len(admit) < self.max_batch_size:
                job = self.waiting[0]
                if admit and len(job.request.prompt) > budget:
                    break
                self.waiting.popleft()
                job.row = len(self.running) + len(admit)
                budget -= len(job.request.prompt)
                job.first_scheduled_ns = time.monotonic_ns()
                r = job.request
                job.kv_blocks = math.ceil((len(r.prompt) + r.max_new_tokens + self._step_tokens(job) - 1)
                                          / self.tokens_per_block)
                admit.append(job)
            already = len(self.running)
        for job in admit:
            self._prefill(job)
            self.stats.admitted += 1
            self.stats.joined_running_batch += already > 0
        with self._cv:
            self._compact()  # a request may have finished at its first token
        if self.running:
            self._decode()
        with self._cv:
            self._compact()
            self.stats.steps += 1
            self.stats.active, self.stats.waiting = len(self.running), len(self.waiting)
            self.stats.max_active = max(self.stats.max_active, len(self.running))

    def _step_tokens(self, job: _Job) -> int:
        if job.mode == "medusa":
            return self.tree.num_nodes
        if job.mode == "lookahead":
            return job.lookahead.decoding_tokens
        return 1

    def _prefill(self, job: _Job) -> None:
        model, dev, r = self.model, self.model.device, job.request
        P, b = len(r.prompt), job.row
        view = KVCache(self.cache.k[:, b:b + 1], self.cache.v[:, b:b + 1])
        t = torch.arange(P, device=dev)
        q, k = t[:, None], t[None, :]
        mask = k <= q
        if model.cfg.sliding_window:
            mask &= q - k < model.cfg.sliding_window
        h = model.hidden(torch.tensor([r.prompt], device=dev), t[None], view, 0, mask[None, None])[0, -1]  # [H]
        first = job.picker.pick(model.logits(h[None])[0])
        job.length = P
        job.h_last = h
        if job.mode == "lookahead":
            job.la = _RowState(job.lookahead, r.prompt, first)
        with self._cv:
            self.running[job.id] = job
        self._emit(job, [first])

    def _plan(self, job: _Job) -> tuple[StepLayout | None, list[int], list[int], torch.Tensor, list]:
        """(lookahead layout, tokens, depths, local mask [T, T], chains) of one row's step."""
        root = job.outs[-1]
        if job.mode == "lookahead":
            layout, toks = job.la.step_tokens()
            return layout, toks, list(layout.depths), _local_mask(layout), list(layout.chains)
        if job.mode == "medusa":
            tree = self.tree
            cand = self.model.medusa_logits(job.h_last[None]).topk(tree.top_k, dim=-1).indices[0]  # [K, top_k]
            toks = [root] + cand[tree.head, tree.rank].tolist()
            chains = [[i for i in row[1:] if i >= 0] for row in tree.retrieve.tolist()]
            return None, toks, list(tree.depths), tree.mask, chains
        return None, [root], [0], torch.ones(1, 1, dtype=torch.bool), []

    def _compact(self) -> None:
        """Move the highest running rows into the holes finished requests left (caller holds the lock)."""
        used = {j.row for j in self.running.values()}
        holes = sorted(r for r in range(len(self.running)) if r not in used)
        movers = sorted((j for j in self.running.values() if j.row >= len(self.running)), key=lambda j: -j.row)
        for hole, job in zip(holes, movers):
            for kv in (self.cache.k, self.cache.v):  # [L, B, nkv, S, d]
                kv[:, hole, :, : job.length] = kv[:, job.row, :, : job.length]
            job.row = hole

    @property
    def free_rows(self) -> list[int]:
        return list(range(len(self.running), self.max_batch_size))

    def _decode(self) -> None:
        model, dev = self.model, self.model.device
        with self._cv:
            jobs = sorted(self.running.values(), key=lambda j: j.row)
        B = len(jobs)
        assert [j.row for j in jobs] == list(range(B)), "running rows must be compact"
        view = KVCache(self.cache.k[:, :B], self.cache.v[:, :B])
        plans = {j.id: self._plan(j) for j in jobs}
        T = max(len(p[1]) for p in plans.values())
        tokens = torch.zeros(B, T, dtype=torch.long)
        depths = torch.zeros(B, T, dtype=torch.long)
        local = torch.eye(T, dtype=torch.bool)[None].repeat(B, 1, 1)
        lens = torch.zeros(B, dtype=torch.long)
        for j in jobs:
            _, toks, dep, loc, _ = plans[j.id]
            n = len(toks)
            tokens[j.row, :n] = torch.tensor(toks)
            depths[j.row, :n] = torch.tensor(dep)
            local[j.row, :n, :n] = loc
            lens[j.row] = j.length
        tokens, depths, local, lens = tokens.to(dev), depths.to(dev), local.to(dev), lens.to(dev)
        mask = draft_attention_mask(local, depths, lens, int(lens.max()) + T, model.cfg.sliding_window)
        h = model.hidden(tokens, lens[:, None] + depths, view,
                         lens[:, None] + torch.arange(T, device=dev)[None, :], mask)  # [B, T, H]
        logits = model.logits(h)  # [B, T, V]
        pred = logits.argmax(-1).tolist()
        self.stats.history.append((time.monotonic(), len(jobs), sum(len(p[1]) for p in plans.values())))
        for i, j in enumerate(jobs):
            layout, toks, _, _, chains = plans[j.id]
            if j.request.sampling.greedy and j.picker.trivial:
                choose = pred[i].__getitem__
            else:
                # the walk asks for the nodes in order and emits every choice: the picker's counts and
                # generated-token count are those of plain decoding at each node (module docstring)
                def choose(node: int, i: int = i, j: _Job = j) -> int:
                    return j.picker.pick(logits[i, node])
            path, bonus = longest_chain(chains, toks, choose)
            j.steps += 1
            j.accepted += len(path) - 1
            j.drafted += len(toks) - 1
            keep_path(view, i, j.length, path)
            j.length += len(path)
            j.h_last = h[i, path[-1]]
            emitted = [toks[node] for node in path[1:]] + [bonus]
            if j.mode == "lookahead":
                j.la.advance(layout, toks, pred[i], emitted)
            self._emit(j, emitted)

    def _emit(self, job: _Job, tokens: list[int]) -> None:
        now = time.monotonic_ns()
        job.first_token_ns = job.first_token_ns or now
        job.last_token_ns = now
        new = []
        for t in tokens:
            job.outs.append(t)
            job.done = _stopped(job.outs, job.request)
            if job.done != "end_id":
                new.append(t)
            if job.done:
                break
        self.stats.tokens_generated += len(new)
        if job.done:
            self._finish(job, job.done)
            try:
                job.on_tokens(new, job.result())
            finally:
                self._jobs.pop(job.id, None)
        elif new:
            job.on_tokens(new, None)

    def _finish(self, job: _Job, reason: str) -> None:
        """Remove a finished or cancelled job and free its row."""
        with self._cv:
            self.running.pop(job.id, None)  # its row is refilled by _compact at the end of the step
            if reason == "cancelled":
                job.done = "cancelled"
                self.stats.cancelled += 1
                self._jobs.pop(job.id, None)
            else:
                self.stats.finished += 1


def schedule_all(scheduler: Scheduler, requests: list[Request], **kw) -> list[Result]:
    """Submit `requests`, run the loop until they are done; results in request order."""
    results: dict[int, Result] = {}
    ids = []
    for r in requests:
        def done(_: list[int], res: Result | None, k: int = len(ids)) -> None:
            if res is not None:
                results[k] = res
        ids.append(scheduler.submit(r, done, **kw))
    scheduler.run_until_idle()
    return [results[k] for k in range(len(requests))]
