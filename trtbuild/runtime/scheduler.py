"""In-flight (continuous) batching for the reference runtime, and offline decoding through it.

A fixed KV cache of `max_batch_size` rows; each running request owns one row (slot == position),
and the running requests always hold rows 0..n-1 (a finished request's row is refilled by moving
the last row's KV into it), so a step computes exactly the n running rows. Every `step()`:
1. admission (guaranteed no evict): waiting requests take free rows, in arrival order, while the
   step's token budget (`max_num_tokens`) allows; a row holds prompt + max_new_tokens + one step's
   drafts, so every admitted request can finish. Each is prefilled alone into its row and emits its
   first token at once;
2. `decoding.decode_step` over the running rows (propose, one forward pass, verify, accept, advance);
3. tokens delivered through each request's callback; finished and cancelled requests leave at once
   and free their rows.
Plain, Medusa and lookahead requests of one engine share the batch, each with its own decoder and
acceptance rule (`decoding`'s docstring: lossless by default, typical acceptance on request) and its
own speculation mode (issue 16): always, off, or auto, where before each step `decoding.budgets` asks
`governor.allocate` for every auto row's draft from the step-cost model (`cost`, measured at engine
load, kept current from each step's time) and the row's acceptance estimates (its own steps on the
engine's `Evidence`, shared by the rows of one decoding). Greedy output is the same in every mode.
`serve_forever` runs the loop in a thread for servers, `run_until_idle` serves scripts and tests,
`serve_engine` loads an engine in the loop's own thread and raises its load errors to the caller.
Offline decoding (`decode`, `generate`-like) is the same scheduler with every request admitted at
once and stepped until done.

Per-request rules (TensorRT-LLM's executor, `trtbuild.runtime.sampling.TokenPicker`): repetition /
presence / frequency penalties, `min_tokens`, bad words, embedding bias and `return_log_probs` hold
in every mode, the speculative ones included: verification walks the draft nodes in order and each
node's token is chosen by the request's own picker from that node's logits, with the counts as they
stand at that node, so the picker sees exactly the sequence plain decoding would. The drafts
themselves (Medusa heads, lookahead window and pool) stay unpenalised guesses.

Per job, `job_info(job_id)` (a `JobInfo`, also inside the job's callbacks) has the decode steps,
accepted and drafted tokens, the log probs of the tokens delivered so far (`log_probs[-len(new):]`
are the latest callback's) and their cumulative log prob, the perf timestamps of TensorRT-LLM's
RequestPerfMetrics and the KV cache blocks of the job's row (`JobInfo`).
"""

from __future__ import annotations

import copy
import itertools
import math
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from trtbuild.common.errors import GenerationError
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.common.medusa.choices import Choices, MedusaSpec
from trtbuild.common.spec import DecodingSpec
from trtbuild.runtime.cost import CostModel
from trtbuild.common.spec import SPECULATION_MODES, Speculation
from trtbuild.runtime.decoding import (Row, StepInfo, TypicalAcceptance, budgets, check_decoding, decode_step,
                                       prefill_row, resolve_decoding, step_tokens)
from trtbuild.runtime.generate import Request, Result, validate
from trtbuild.runtime.model import KVCache, Model

# on_tokens(new_tokens, result): called from the scheduler thread with each step's new tokens;
# `result` is set (and new_tokens may be empty) exactly once, when the request is finished
Callback = Callable[[list[int], Result | None], None]
# a request's decoding: a spec, or "engine" = the scheduler's own
Decoding = DecodingSpec | Literal["engine"]

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


@dataclass(kw_only=True)
class _Job(Row):
    """A row of the scheduler: the decoding row plus its id, callback, cache slot and timestamps."""

    id: int
    on_tokens: Callback
    arrival_ns: int
    first_scheduled_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0
    kv_blocks: int = 0
    slot: int = -1  # its row of the cache
    cancelled: bool = False

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
    # speculation (issue 16): totals since start (a reader diffs them between two moments) and the last step
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # draft tokens accepted
    expected: float = 0.0  # draft tokens the governor expected to be accepted (its acceptance estimates)
    row_steps: int = 0  # rows x steps
    speculating_row_steps: int = 0  # row-steps that verified a draft
    draft_tokens_last: int = 0  # the last step's draft tokens
    rows_speculating_last: int = 0  # the last step's rows with a draft
    cost_error: float = 0.0  # the cost model's fit: running mean of |predicted - measured| / measured step time
    history: deque = field(default_factory=lambda: deque(maxlen=1000))  # (time, active, step tokens)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history"} | {"recent_steps": list(self.history)[-20:]}

    def copy(self) -> Stats:
        """These figures as of one moment (the history is shared, not copied)."""
        return copy.copy(self)


class Scheduler:
    def __init__(self, model: Model, max_batch_size: int = 8, max_seq_len: int | None = None,
                 max_num_tokens: int = 8192, decoding: Decoding = "engine", *, max_draft_len: int | None = None,
                 lookahead_limit: LookaheadSpec | None | Literal["engine"] = "engine",
                 normalize_log_probs: bool = False, tokens_per_block: int = TOKENS_PER_BLOCK,
                 speculation: Speculation = "always", cost: CostModel | None = None) -> None:
        """decoding: the engine's (default: `resolve_decoding(model)`, what the checkpoint stores), used by
        requests that ask for none; max_draft_len: draft tokens a step may verify per row (default: the
        decoding's); lookahead_limit: the (W, N, G) a request's lookahead must fit (default: the engine's
        decoding's, else the checkpoint's, so a lookahead engine served with another decoding mode still
        takes lookahead requests; None: no limit); speculation: the default of requests that ask for
        none: always (every row drafts all its decoding allows), off (no row drafts: plain decoding),
        auto (each row drafts what `governor.allocate` finds pays, from `cost`, which live steps keep
        current, and the row's own acceptance); a request may ask for auto only with a `cost`;
        normalize_log_probs: TensorRT-LLM's engine-wide option (`sampling.TokenPicker`);
        tokens_per_block: the block size of the KV cache figures in `JobInfo`."""
        self.model = model
        if speculation not in SPECULATION_MODES:
            raise GenerationError(f"speculation must be always, off or auto, got {speculation!r}")
        self.speculation, self.cost = speculation, cost
        self.normalize_log_probs = normalize_log_probs
        if tokens_per_block < 1:
            raise GenerationError(f"tokens_per_block must be >= 1, got {tokens_per_block}")
        self.tokens_per_block = tokens_per_block
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.decoding: DecodingSpec = resolve_decoding(model) if decoding == "engine" else decoding
        self.lookahead_limit: LookaheadSpec | None = (
            (self.decoding if isinstance(self.decoding, LookaheadSpec) else model.cfg.lookahead)
            if lookahead_limit == "engine" else lookahead_limit)
        self.draft_tokens = (max_draft_len + 1) if max_draft_len is not None else step_tokens(self.decoding)
        self.decoding = self.resolve(self.decoding)  # the engine's own must fit its draft tokens too
        if speculation == "auto" and cost is None and self.draft_tokens > 1:
            raise GenerationError("speculation auto needs a cost model (runtime.cost.calibrate)")
        self.max_seq_len = max_seq_len or model.cfg.max_position_embeddings
        self.cache: KVCache = model.new_cache(max_batch_size, self.max_seq_len + self.draft_tokens + 1)
        self.waiting: deque[_Job] = deque()
        self.running: dict[int, _Job] = {}
        self.stats = Stats()
        self.evidence: dict = {}  # decoding -> decoding.Evidence: the acceptance its rows have seen here
        self.error: BaseException | None = None  # what stopped run_forever, if anything did
        self._ids = itertools.count()
        self._jobs: dict[int, _Job] = {}  # every job until its final callback has run
        self._cv = threading.Condition()
        self._stop = False

    @classmethod
    def from_engine(cls, engine_dir: Path, decoding: Decoding | Callable[[Model, int], Decoding] = "engine", *,
                    attention_window: int | None = None, normalize_log_probs: bool = False,
                    speculation: Speculation | Literal["engine"] = "engine", log: Callable[[str], None] = print
                    ) -> Scheduler:
        """The scheduler an engine directory was built for: its limits (build_config, the usable
        sequence length), its decoding (or `decoding(model, max_draft_len)`), an optional sliding
        window (max_attention_window_size) below its max_seq_len, its speculation mode (the build's,
        `engine_speculation`). A speculative engine gets its step cost (`cost.for_engine`: the cached
        calibration, else measured now and cached), so any request may ask for auto."""
        from trtbuild.common.engine_config import EngineConfig, engine_speculation
        from trtbuild.runtime.cost import for_engine

        engine = EngineConfig.read(engine_dir)
        mode = engine_speculation(engine_dir) if speculation == "engine" else speculation
        model = Model.load(engine_dir)
        if callable(decoding):
            decoding = decoding(model, engine.max_draft_len)
        if attention_window and attention_window < engine.max_seq_len:
            # attend over that many tokens (sliding window), as the C++ executor's cyclic KV cache does
            model.cfg = replace(model.cfg, sliding_window=attention_window)
        cost = None
        if engine.max_draft_len:  # timed up to the widest step a full batch of this decoding takes
            own = resolve_decoding(model) if decoding == "engine" else decoding
            width = max(step_tokens(own), step_tokens(model.cfg.lookahead) if model.cfg.lookahead else 1)
            cost = for_engine(model, engine_dir, min(engine.max_num_tokens, engine.max_batch_size * width), log)
        return cls(model, engine.max_batch_size, engine.usable_seq_len, engine.max_num_tokens, decoding,
                   max_draft_len=engine.max_draft_len or None, normalize_log_probs=normalize_log_probs,
                   speculation=mode, cost=cost)

    # --- the public side (any thread) ---------------------------------------------------------

    def reserve_id(self) -> int:
        """An id for a request about to be submitted (so its callback can know it from the start)."""
        with self._cv:
            return next(self._ids)

    def resolve(self, decoding: Decoding) -> DecodingSpec:
        """A request's decoding, checked against this engine: a lookahead (W, N, G) must be <= the
        engine's, and every decoding must fit the draft tokens the engine was built for."""
        if decoding == "engine":
            return self.decoding
        if decoding is not None and not isinstance(decoding, (MedusaSpec, LookaheadSpec)):
            raise GenerationError(f"unknown decoding {decoding!r} (a MedusaSpec, a LookaheadSpec or None)")
        check_decoding(self.model, decoding)
        if isinstance(decoding, LookaheadSpec):
            if self.lookahead_limit is not None:
                self.lookahead_limit.check_request(decoding)
            if decoding.max_ngram_size == 1:
                return None
        need = step_tokens(decoding)
        if need > self.draft_tokens:
            what = (f"lookahead {decoding.as_tuple()}" if isinstance(decoding, LookaheadSpec)
                    else f"the Medusa tree ({need} nodes)")
            raise GenerationError(f"{what} needs {need} tokens per step; this engine was built for "
                                  f"{self.draft_tokens}")
        return decoding

    def submit(self, request: Request, on_tokens: Callback, decoding: Decoding = "engine",
               typical: TypicalAcceptance | None = None, job_id: int | None = None,
               speculation: Speculation | None = None) -> int:
        """Queue a request; returns its id. decoding: the engine's by default; typical: Medusa's typical
        acceptance instead of the lossless rule (sampled requests only; not with per-token rules);
        speculation: the request's own (None: the scheduler's)."""
        mode = self.speculation if speculation is None else speculation
        if mode not in SPECULATION_MODES:
            raise GenerationError(f"speculation must be auto, always or off, got {speculation!r}")
        if mode == "auto" and self.cost is None:
            if self.draft_tokens > 1:
                raise GenerationError("speculation auto needs a step cost model; this scheduler has none")
            mode = "off"  # an engine without draft tokens: nothing to govern
        if self.error is not None:
            raise GenerationError(f"the scheduler stopped: {self.error}")
        validate(self.model, [request])
        if len(request.prompt) + request.max_new_tokens > self.max_seq_len:
            raise GenerationError(f"prompt ({len(request.prompt)} tokens) + max_tokens ({request.max_new_tokens}) "
                                  f"exceeds max_seq_len {self.max_seq_len}")
        spec = self.resolve(decoding)
        if typical is not None and not request.sampling.greedy and request.per_token_rules:
            raise GenerationError("typical acceptance does not apply penalties, min_tokens, bad words, embedding "
                                  "bias or log probs to the drafts; use the default (lossless) acceptance")
        picker = request.picker(self.model.cfg.dims.vocab_size, self.model.device, self.normalize_log_probs)
        with self._cv:
            job = _Job(id=next(self._ids) if job_id is None else job_id, request=request, decoding=spec,
                       picker=picker, typical=typical, speculation=mode, on_tokens=on_tokens,
                       arrival_ns=time.monotonic_ns())
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

    def stats_now(self) -> Stats:
        """`stats` as of one moment, between two of the scheduler's updates (the live object read field by
        field can pair a newer `active` with an older `finished`)."""
        with self._cv:
            return self.stats.copy()

    def progress(self, job_id: int) -> tuple[int, int, int]:
        """(decode steps, accepted draft tokens, draft tokens verified) of a job so far."""
        job = self._jobs.get(job_id)
        return (job.steps, job.accepted, job.drafted) if job is not None else (0, 0, 0)

    def job_info(self, job_id: int) -> JobInfo | None:
        """A job's `JobInfo` (from submit until its final callback has returned); None if unknown."""
        job = self._jobs.get(job_id)
        return job.info() if job is not None else None

    def run_forever(self) -> None:
        """The step loop, in the calling thread, until `shutdown()` (idle: waits for work); an error
        that stops it is kept in `self.error` and re-raised.

        On CPU, run it in the thread that loaded the model: OpenMP keeps one thread team per
        thread, and a step loop whose model was packed from another thread ran 64 SmolLM2 tokens in
        1.52-1.60 s on a 2-core machine instead of 1.13-1.19 s."""
        try:
            while True:
                with self._cv:
                    while not self._stop and not self.waiting and not self.running:
                        self._cv.wait()
                    if self._stop:
                        return
                self.step()
        except BaseException as e:
            self.error = e
            raise

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
            budget = self.max_num_tokens - sum(j.step_tokens for j in self.running.values())
            self._compact()
            while self.waiting and len(self.running) + len(admit) < self.max_batch_size:
                job = self.waiting[0]
                if admit and len(job.request.prompt) > budget:
                    break
                self.waiting.popleft()
                job.slot = len(self.running) + len(admit)
                budget -= len(job.request.prompt)
                job.first_scheduled_ns = time.monotonic_ns()
                r = job.request
                job.kv_blocks = math.ceil((len(r.prompt) + r.max_new_tokens + job.step_tokens - 1)
                                          / self.tokens_per_block)
                admit.append(job)
            already = len(self.running)
        for job in admit:
            first = prefill_row(self.model, self.cache, job.slot, job, self.evidence)
            with self._cv:
                self.running[job.id] = job
            self._emit(job, [first])
            self.stats.admitted += 1
            self.stats.joined_running_batch += already > 0
        with self._cv:
            self._compact()  # a request may have finished at its first token
            jobs = sorted(self.running.values(), key=lambda j: j.slot)
        if jobs:
            assert [j.slot for j in jobs] == list(range(len(jobs))), "running rows must be compact"
            accepted = sum(j.accepted for j in jobs)
            budget, expected = budgets(jobs, self.cost)
            info = StepInfo()
            t0 = time.perf_counter()
            emitted = decode_step(self.model, self.cache, jobs, budget, info)
            seconds = time.perf_counter() - t0
            self._account(info, seconds, expected, sum(j.accepted for j in jobs) - accepted)
            for job, tokens in zip(jobs, emitted):
                self._emit(job, tokens)
        with self._cv:
            self._compact()
            self.stats.steps += 1
            self.stats.active, self.stats.waiting = len(self.running), len(self.waiting)
            self.stats.max_active = max(self.stats.max_active, len(self.running))

    def _account(self, info: StepInfo, seconds: float, expected: float, accepted: int) -> None:
        """A step's figures into `stats`, and its time into the cost model (what the step computed:
        rows x padded width, and the heads pass apart)."""
        st = self.stats
        st.history.append((time.monotonic(), info.rows, info.rows + info.drafted))
        st.drafted += info.drafted
        st.accepted += accepted
        st.expected += expected
        st.row_steps += info.rows
        st.speculating_row_steps += info.speculating
        st.draft_tokens_last, st.rows_speculating_last = info.drafted, info.speculating
        if self.cost is not None:
            tokens = info.rows * info.width
            predicted = self.cost.step_time(tokens) + (self.cost.heads if info.heads_seconds else 0.0)
            st.cost_error += 0.05 * (abs(predicted - seconds) / seconds - st.cost_error)
            self.cost = self.cost.observe(tokens, seconds - info.heads_seconds)
            if info.heads_seconds:
                self.cost = self.cost.observe_heads(info.heads_seconds)

    def _compact(self) -> None:
        """Move the highest running rows into the holes finished requests left (caller holds the lock)."""
        used = {j.slot for j in self.running.values()}
        holes = sorted(r for r in range(len(self.running)) if r not in used)
        movers = sorted((j for j in self.running.values() if j.slot >= len(self.running)), key=lambda j: -j.slot)
        for hole, job in zip(holes, movers):
            for kv in (self.cache.k, self.cache.v):  # [L, B, nkv, S, d]
                kv[:, hole, :, : job.length] = kv[:, job.slot, :, : job.length]
            job.slot = hole

    @property
    def free_rows(self) -> list[int]:
        return list(range(len(self.running), self.max_batch_size))

    def _emit(self, job: _Job, tokens: list[int]) -> None:
        now = time.monotonic_ns()
        job.first_token_ns = job.first_token_ns or now
        job.last_token_ns = now
        new = job.emit(tokens)
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


def serve_engine(engine_dir: Path, decoding: Decoding | Callable[[Model, int], Decoding] = "engine", *,
                 threads: int | None = None, **kw) -> tuple[Scheduler, threading.Thread]:
    """`Scheduler.from_engine(engine_dir, decoding, **kw)` built and run in a thread of its own (see
    `run_forever`; `threads`: torch's CPU threads there): a load error is raised here, in the caller's
    thread; an error that later stops the loop is `scheduler.error` (the thread is then no longer alive)."""
    box: dict = {}
    booted = threading.Event()

    def boot() -> None:
        try:
            if threads:
                torch.set_num_threads(threads)
            box["s"] = Scheduler.from_engine(engine_dir, decoding, **kw)
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            box["error"] = e
            return
        finally:
            booted.set()
        try:
            box["s"].run_forever()
        except BaseException:  # noqa: BLE001 (kept in scheduler.error; submit refuses from then on)
            traceback.print_exc()  # the server's log says why

    thread = threading.Thread(target=boot, name="trtbuild-scheduler", daemon=True)
    thread.start()
    booted.wait()
    if "error" in box:
        thread.join()
        raise box["error"]
    return box["s"], thread


def _per_request(decoding: Decoding | Sequence[Decoding], n: int) -> list[Decoding]:
    """One decoding for all n requests, or one each (checked)."""
    per = list(decoding) if isinstance(decoding, (list, tuple)) else [decoding] * n
    if len(per) != n:
        raise GenerationError(f"{len(per)} decodings for {n} requests")
    return per


def schedule_all(scheduler: Scheduler, requests: Sequence[Request], decoding: Decoding | Sequence[Decoding] = "engine",
                 typical: TypicalAcceptance | None = None) -> list[Result]:
    """Submit `requests` (one decoding for all, or one each), run the loop until they are done;
    results in request order."""
    per = _per_request(decoding, len(requests))
    results: dict[int, Result] = {}
    for k, (r, d) in enumerate(zip(requests, per)):
        def done(_: list[int], res: Result | None, k: int = k) -> None:
            if res is not None:
                results[k] = res
        scheduler.submit(r, done, d, typical)
    scheduler.run_until_idle()
    return [results[k] for k in range(len(requests))]


def decode(model: Model, requests: Sequence[Request], decoding: Decoding | Sequence[Decoding] = "engine",
           typical: TypicalAcceptance | None = None, limit: LookaheadSpec | None = None) -> list[Result]:
    """Offline decoding: every request admitted at once and stepped until done (the scheduler's own
    path, `decode_step`); results in request order. decoding: one for all or one per request ("engine":
    what the checkpoint stores); limit: an engine's (W, N, G) that every lookahead request must fit."""
    validate(model, list(requests))  # before the cache is sized from them
    per = [resolve_decoding(model) if d == "engine" else d for d in _per_request(decoding, len(requests))]
    for d in per:  # before anything is allocated
        check_decoding(model, d)
        if limit is not None and isinstance(d, LookaheadSpec):
            limit.check_request(d)
    sched = Scheduler(model, len(requests), max(len(r.prompt) + r.max_new_tokens for r in requests),
                      max_num_tokens=sum(len(r.prompt) for r in requests) + 1, decoding=None,
                      max_draft_len=max(step_tokens(d) for d in per) - 1, lookahead_limit=limit)
    return schedule_all(sched, requests, per, typical)


def medusa_generate(model: Model, requests: Sequence[Request], choices: Choices,
                    typical: TypicalAcceptance | None = None) -> list[Result]:
    """Offline Medusa decoding with the tree `choices` (canonical). Lossless unless `typical` (before
    issue 15 sampled requests took typical acceptance by default; now it is asked for)."""
    return decode(model, requests, MedusaSpec(tuple(tuple(p) for p in choices)), typical)


def lookahead_generate(model: Model, requests: Sequence[Request], spec: LookaheadSpec | Sequence[LookaheadSpec],
                       limit: LookaheadSpec | None = None, typical: TypicalAcceptance | None = None) -> list[Result]:
    """Offline lookahead decoding: one (W, N, G) for all requests or one each, each <= `limit` when given."""
    return decode(model, requests, spec if isinstance(spec, LookaheadSpec) else list(spec), typical, limit)


__all__ = ["JobInfo", "Scheduler", "Stats", "decode", "lookahead_generate", "medusa_generate", "schedule_all",
           "serve_engine"]
