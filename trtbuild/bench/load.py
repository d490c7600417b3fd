"""The load generator: prompts of requested token lengths from local text, and concurrent
streaming clients (tritonclient gRPC, or HTTP generate_stream) or the in-process scheduler.

Concurrency mode keeps C requests in flight (each worker sends its next request when the last one
ends); request-rate mode sends at Poisson arrival times (gamma-distributed gaps with shape
`burstiness`: 1 = Poisson, < 1 burstier), each request on its own thread.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trtbuild.bench.metrics import RequestRecord
from trtbuild.errors import ConfigError


@dataclass(frozen=True)
class Prompt:
    text: str
    input_tokens: int
    max_tokens: int


def parse_length(text: str, what: str) -> tuple[int, int]:
    """'MEAN[:STD]' -> (mean, std)."""
    try:
        mean, _, std = text.partition(":")
        m, s = int(mean), int(std or 0)
    except ValueError:
        raise ConfigError(f"{what} must be MEAN[:STD] in tokens, got {text!r}") from None
    if m < 1 or s < 0:
        raise ConfigError(f"{what} needs MEAN >= 1 and STD >= 0, got {text!r}")
    return m, s


def synthetic_prompts(tok, n: int, isl: tuple[int, int], osl: tuple[int, int], seed: int) -> list[Prompt]:
    """Prompts cut from the local standard library's sources to normally distributed lengths."""
    from trtbuild.medusa.train import stdlib_files

    rng = random.Random(seed)
    ids = []
    for f in stdlib_files()[:40]:
        ids += tok(f.read_text(errors="replace"), add_special_tokens=False)["input_ids"]
        if len(ids) > 200_000:
            break
    out = []
    for _ in range(n):
        want = max(1, round(rng.gauss(*isl)) if isl[1] else isl[0])
        start = rng.randrange(0, len(ids) - want - 1)
        text = tok.decode(ids[start:start + want])
        count = len(tok(text)["input_ids"])
        out.append(Prompt(text, count, max(1, round(rng.gauss(*osl)) if osl[1] else osl[0])))
    return out


def dataset_prompts(path: Path, tok, default_max_tokens: int) -> list[Prompt]:
    """JSON lines with "text_input" (or "prompt") and optional "max_tokens"."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            text = obj.get("text_input", obj.get("prompt"))
        except (json.JSONDecodeError, AttributeError):
            raise ConfigError(f"{path}:{i}: not a JSON object") from None
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{path}:{i}: needs a non-empty \"text_input\"")
        out.append(Prompt(text, len(tok(text)["input_ids"]), int(obj.get("max_tokens", default_max_tokens))))
    if not out:
        raise ConfigError(f"{path}: no requests")
    return out


def sender(url: str, model: str, protocol: str = "grpc") -> Callable[[Prompt, RequestRecord], None]:
    """Send one prompt as a streamed request (gRPC or HTTP generate_stream), recording each
    response's arrival time, the text and the server's draft counters."""
    from trtbuild.serve.client import stream_grpc, stream_http

    stream = stream_grpc if protocol == "grpc" else stream_http

    def send(p: Prompt, rec: RequestRecord) -> None:
        for out in stream(url, p.text, p.max_tokens, model):
            if out.get("text_output"):
                rec.responses.append(time.monotonic())
                rec.text += out["text_output"]
            rec.accepted_draft_tokens = int(out.get("total_accepted_draft_tokens", 0) or 0)
            rec.draft_tokens = int(out.get("total_draft_tokens", 0) or 0)
    return send


def run_load(send: Callable[[Prompt, RequestRecord], None], prompts: list[Prompt], tok, *, concurrency: int | None,
             rate: float | None = None, burstiness: float = 1.0, seed: int = 0,
             progress: Callable[[], None] | None = None, duration: float | None = None) -> list[RequestRecord]:
    """Send every prompt (with `duration`: cycle through them until that many seconds have passed,
    then let the requests in flight finish); returns one record per request sent, in order."""
    records: list[RequestRecord] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration if duration else None

    def take() -> int | None:
        with lock:
            k = len(records)
            if (deadline is None and k >= len(prompts)) or (deadline is not None and time.monotonic() >= deadline):
                return None
            p = prompts[k % len(prompts)]
            records.append(RequestRecord(k, 0.0, p.input_tokens))
            return k

    def one(i: int) -> None:
        rec = records[i]
        rec.sent = time.monotonic()
        try:
            send(prompts[i % len(prompts)], rec)
        except Exception as e:  # noqa: BLE001 (recorded per request, reported in the results)
            rec.error = " ".join(str(e).split())
        rec.output_tokens = len(tok(rec.text, add_special_tokens=False)["input_ids"]) if rec.text else 0
        if progress:
            progress()

    if rate is None:
        def worker() -> None:
            while (i := take()) is not None:
                one(i)

        threads = [threading.Thread(target=worker) for _ in range(concurrency or 1)]
        for t in threads:
            t.start()
    else:
        rng = random.Random(seed)
        threads = []
        while (i := take()) is not None:
            t = threading.Thread(target=one, args=(i,))
            t.start()
            threads.append(t)
            time.sleep(rng.gammavariate(burstiness, 1.0 / (rate * burstiness)))
    for t in threads:
        t.join()
    return records


def inprocess_sender(engine_dir: Path) -> tuple[Callable[[Prompt, RequestRecord], None], Callable[[], None]]:
    """Requests straight into the reference runtime's scheduler (no server): (send, stop)."""
    from trtbuild.runtime import Model, Request
    from trtbuild.runtime.scheduler import Scheduler
    from trtbuild.runtime.tokenizer import default_end_ids, load_tokenizer
    from trtbuild.triton_repo.python_models import Detokenizer

    tok = load_tokenizer(engine_dir)
    ends = default_end_ids(engine_dir, tok)
    box: dict = {}
    booted = threading.Event()

    def boot() -> None:  # load and loop in one thread (see Scheduler.run_forever)
        model = Model.load(engine_dir)
        build = json.loads((Path(engine_dir) / "config.json").read_text())["build_config"]
        box["s"] = Scheduler(model, int(build["max_batch_size"]),
                             int(build["max_seq_len"]) - int(build.get("max_draft_len") or 0),
                             int(build["max_num_tokens"]))
        booted.set()
        box["s"].run_forever()

    thread = threading.Thread(target=boot, daemon=True)
    thread.start()
    booted.wait()
    sched = box["s"]

    def stop() -> None:
        sched.shutdown()
        thread.join(30)

    def send(p: Prompt, rec: RequestRecord) -> None:
        done = threading.Event()
        detok = Detokenizer(tok)
        jid = sched.reserve_id()

        def on_tokens(tokens, result):
            text = detok.add(tokens, final=result is not None)
            if text:
                rec.responses.append(time.monotonic())
                rec.text += text
            steps, rec.accepted_draft_tokens, rec.draft_tokens = sched.progress(jid)
            if result is not None:
                done.set()

        sched.submit(Request(tuple(tok(p.text)["input_ids"]), p.max_tokens, end_ids=ends), on_tokens, job_id=jid)
        done.wait()

    return send, stop
