"""Triton Python model `tensorrt_llm` for the torch backend (written by trtbuild): the reference
runtime's in-flight batching scheduler behind the tensorrtllm backend's tensor names. Its config is
read as the C++ backend reads it (`trtbuild.triton_repo.contract`: the engine from gpt_model_path,
the same required keys and messages, the same value parsing), its requests as the C++ backend reads
them (`trtbuild.triton_repo.llm_requests`), and it writes the outputs the C++ backend writes."""

import json
import os
import queue
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from trtbuild.common.errors import TrtbuildError
from trtbuild.runtime import Model
from trtbuild.runtime.scheduler import serve_engine
from trtbuild.runtime.tokenizer import default_end_ids
from trtbuild.triton_repo.contract import ContractError, read_parameters
from trtbuild.triton_repo.llm_requests import parse_request
from trtbuild.triton_repo.python_models import Holdback, RequestError, cancel_dir, load_tokenizer, tag_tokens

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _inputs(request) -> dict:
    return {t.name(): t.as_numpy() for t in request.inputs()}


def speculation(p: dict):
    """The engine's decoding from decoding_mode and its parameters, as the C++ backend resolves them
    (a function of the loaded model and its max_draft_len, for `Scheduler.from_engine`): unset = what
    the engine was built for; medusa without a parseable medusa_choices = mc_sim_7b_63
    (mis.cc@c2e65b8:596-608); lookahead = the three lookahead_* values; top_k / top_p = plain."""
    from trtbuild.common.lookahead.spec import LookaheadSpec
    from trtbuild.common.medusa.choices import MedusaSpec, parse_choices, presets

    def decoding(model: Model, max_draft_len: int):
        mode = p["decoding_mode"]
        if mode is None:
            return "engine"
        if mode == "medusa":
            if not model.medusa:
                raise ContractError("decoding_mode medusa, but the engine has no Medusa heads")
            tree = p["medusa_choices"] or [list(c) for c in presets()["mc_sim_7b_63"]]
            try:
                return MedusaSpec(parse_choices(tree, num_heads=len(model.medusa), max_draft_len=max_draft_len).choices)
            except Exception as e:  # noqa: BLE001 (a tree the engine cannot verify)
                raise ContractError(f"medusa_choices do not fit this engine: {e}") from None
        if mode == "lookahead":
            spec = LookaheadSpec(p["lookahead_window_size"], p["lookahead_ngram_size"],
                                 p["lookahead_verification_set_size"])
            if spec.max_draft_len > max_draft_len:
                raise ContractError(f"lookahead {spec.as_tuple()} needs max_draft_len {spec.max_draft_len}; the "
                                    f"engine was built for {max_draft_len}")
            return spec
        if mode in ("top_k", "top_p", "top_k_top_p"):
            return None
        raise ContractError(f"decoding_mode {mode} is not supported by the torch backend")

    return decoding


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = read_parameters({k: v["string_value"] for k, v in cfg.get("parameters", {}).items()})
        if p["gpt_model_type"] in ("V1", "v1"):
            raise ContractError("gpt_model_type V1 (static batching): the torch backend batches in flight only")
        if int(p["max_beam_width"]) != 1:
            raise ContractError(f"max_beam_width {p['max_beam_width']}: the torch backend decodes one beam")
        if p["batch_scheduler_policy"] != "guaranteed_no_evict":
            raise ContractError(f"batch_scheduler_policy {p['batch_scheduler_policy']}: the torch backend "
                                "schedules guaranteed_no_evict only")
        # mis.cc@c2e65b8:746-772: a path that does not exist is dropped with a warning, then the load fails
        engine = Path(args["model_repository"]) / p["gpt_model_path"] if p["gpt_model_path"] else None
        if engine is None or not engine.exists():
            raise ContractError("Both encoder and decoder model paths are empty")
        self.exclude_input = bool(p["exclude_input_in_output"])
        self.window = p["max_attention_window_size"]
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(cfg)
        self.end_ids = default_end_ids(engine)
        self.cancelled = cancel_dir()
        has_tok = (engine / "tokenizer.json").is_file() or (engine / "tokenizer.model").is_file()
        self.tokenizer = load_tokenizer(engine) if has_tok else None
        # The model is loaded, and the scheduler runs, in one thread of its own: on CPU, OpenMP
        # keeps a thread team per thread, and packing the weights in another thread made every
        # step ~35 % slower (see Scheduler.run_forever). A load error is raised here.
        threads = os.environ.get("TRTBUILD_CPU_THREADS")
        self.scheduler, self.thread = serve_engine(
            engine, speculation(p), attention_window=min(self.window) if self.window else None,
            normalize_log_probs=bool(p["normalize_log_probs"]), threads=int(threads) if threads else None)
        # responses leave from their own thread: the decode loop never waits on Triton's IPC
        self._outbox = queue.Queue()
        self._sender = threading.Thread(target=self._send_loop, daemon=True)
        self._sender.start()
        self._metrics_stop = threading.Event()
        self._metrics = threading.Thread(target=self._export_metrics, daemon=True)
        self._metrics.start()

    def _send_loop(self):
        while True:
            item = self._outbox.get()
            if item is None:
                return
            sender, response, flags = item
            try:
                if response is None:  # the flag alone: the request is complete
                    sender.send(flags=flags)
                else:
                    sender.send(response, flags=flags)
            except Exception:  # noqa: BLE001 (the client is gone: nothing to deliver to)
                pass

    def _export_metrics(self):
        """The scheduler's statistics as Prometheus gauges on Triton's metrics endpoint."""
        names = {"active": "active requests (rows decoding)", "waiting": "requests waiting for a row",
                 "steps": "scheduler steps", "admitted": "requests admitted",
                 "joined_running_batch": "requests admitted while others were mid-decode",
                 "finished": "requests finished", "cancelled": "requests cancelled (client gone)",
                 "max_active": "most rows decoding at once", "tokens_generated": "output tokens",
                 # speculation (issue 16): totals since load, then the last step
                 "drafted": "draft tokens verified", "accepted": "draft tokens accepted",
                 "expected": "draft tokens the governor expected to be accepted",
                 "row_steps": "rows x decode steps", "speculating_row_steps": "row-steps that verified a draft",
                 "draft_tokens_last": "draft tokens in the last step",
                 "rows_speculating_last": "rows with a draft in the last step",
                 "cost_error": "the step-cost model's fit: running mean of |predicted - measured| / measured"}
        gauges = {}
        self._families = []  # a family must outlive its metrics
        for key, text in names.items():
            family = pb_utils.MetricFamily(name=f"trtbuild_scheduler_{key}", description=text,
                                           kind=pb_utils.MetricFamily.GAUGE)
            self._families.append(family)
            gauges[key] = family.Metric(labels={"model": "tensorrt_llm"})
        # the totals first, the rows now last: a scrape between two of these sets that sees a row gone
        # from `active` also sees it counted in `finished` or `cancelled`
        order = [k for k in gauges if k not in ("active", "waiting")] + ["active", "waiting"]
        while not self._metrics_stop.wait(0.2):
            stats = self.scheduler.stats_now()
            for key in order:
                gauges[key].set(float(getattr(stats, key)))

    def _request(self, request):
        llm = parse_request(_inputs(request), default_exclude_input=self.exclude_input, end_ids=self.end_ids,
                            engine_lookahead=self.scheduler.lookahead_limit,
                            parameters=json.loads(request.parameters() or "{}"))
        if llm.streaming and not self.decoupled:  # utils.cc@c2e65b8:904-907
            raise RequestError("Streaming is only supported if model is deployed using decoupled mode.")
        return llm

    @staticmethod
    def _response(tokens, info, job_id, llm, log_probs, generated):
        """The outputs the C++ backend writes for one response of a request (beam width 1);
        `generated`: the response's generated tokens (its tokens less a prompt in front)."""
        out = [pb_utils.Tensor("output_ids", np.array(tag_tokens(tokens, job_id), dtype=np.int32).reshape(1, 1, -1)),
               pb_utils.Tensor("sequence_length", np.array([[len(tokens)]], dtype=np.int32))]
        if llm.return_num_input_tokens:
            out.append(pb_utils.Tensor("num_input_tokens", np.array([[len(llm.request.prompt)]], dtype=np.int32)))
        if llm.return_num_output_tokens:
            out.append(pb_utils.Tensor("num_output_tokens", np.array([[generated]], dtype=np.int32)))
        if llm.return_log_probs:
            out += [pb_utils.Tensor("cum_log_probs", np.array([[info.cum_log_prob]], dtype=np.float32)),
                    pb_utils.Tensor("output_log_probs", np.array(log_probs, dtype=np.float32).reshape(1, 1, -1))]
        if llm.return_perf_metrics:
            rate = info.accepted / info.drafted if info.drafted else 0.0
            ints = {"kv_cache_alloc_new_blocks": info.kv_cache_alloc_new_blocks,
                    "kv_cache_reused_blocks": info.kv_cache_reused_blocks,
                    "kv_cache_alloc_total_blocks": info.kv_cache_alloc_total_blocks}
            times = {"arrival_time_ns": info.arrival_time_ns, "first_scheduled_time_ns": info.first_scheduled_time_ns,
                     "first_token_time_ns": info.first_token_time_ns, "last_token_time_ns": info.last_token_time_ns}
            out += [pb_utils.Tensor(k, np.array([[v]], dtype=np.int32)) for k, v in ints.items()]
            out += [pb_utils.Tensor(k, np.array([[v]], dtype=np.int64)) for k, v in times.items()]
            out += [pb_utils.Tensor("acceptance_rate", np.array([[rate]], dtype=np.float32)),
                    pb_utils.Tensor("total_accepted_draft_tokens", np.array([[info.accepted]], dtype=np.int32)),
                    pb_utils.Tensor("total_draft_tokens", np.array([[info.drafted]], dtype=np.int32))]
        return pb_utils.InferenceResponse(output_tensors=out)

    def execute(self, requests):
        waits = []
        for request in requests:
            sender = request.get_response_sender() if self.decoupled else None
            try:
                llm = self._request(request)
            except (TrtbuildError, ValueError, TypeError) as e:
                err = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e)))
                if sender:
                    sender.send(err, flags=FINAL)
                else:
                    waits.append((None, err))
                continue
            waits.append(self._submit(llm, sender, request))
        if self.decoupled:
            return None
        out = []
        for done, box in waits:
            if done is not None:
                done.wait()
            out.append(box if done is None else box["response"])
        return out

    def _submit(self, llm, sender, request):
        done, box = threading.Event(), {}
        hold = Holdback(self.tokenizer)
        streaming = llm.streaming and sender is not None
        # a non-streamed response carries the prompt first unless exclude_input_in_output
        collected = [] if llm.exclude_input or streaming else list(llm.request.prompt)
        logs = {"sent": 0, "all": []}
        state = {"id": self.scheduler.reserve_id()}
        sched = self.scheduler

        def on_tokens(tokens, result):
            if state.get("gone"):
                return
            flag = self.cancelled / str(state["id"])
            if (sender.is_cancelled() if sender is not None else request.is_cancelled()) or flag.exists():
                flag.unlink(missing_ok=True)
                sched.cancel(state["id"])
                state["gone"] = True
                # the request must still complete: without its final flag Triton counts it in flight
                # (an ensemble's too) for good, and a later shutdown waits for it
                if sender is not None:
                    self._outbox.put((sender, None, FINAL))
                else:
                    box["response"] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                        "cancelled", pb_utils.TritonError.CANCELLED))
                    done.set()
                return
            info = sched.job_info(state["id"])
            if streaming:
                chunk = hold.push(tokens, result is not None)
                if chunk or result is not None:
                    lp = list(info.log_probs[logs["sent"]:logs["sent"] + len(chunk)]) if llm.return_log_probs else []
                    logs["sent"] += len(chunk)
                    self._outbox.put((sender, self._response(chunk, info, state["id"], llm, lp, len(chunk)),
                                      FINAL if result is not None else 0))
                return
            collected.extend(tokens)
            if result is not None:
                generated = len(collected) - (0 if llm.exclude_input else len(llm.request.prompt))
                resp = self._response(collected, info, state["id"], llm, list(info.log_probs), generated)
                if sender is not None:
                    self._outbox.put((sender, resp, FINAL))
                box["response"] = resp
                done.set()

        try:
            sched.submit(llm.request, on_tokens, llm.lookahead or "engine", llm.typical, job_id=state["id"],
                         speculation=llm.speculation)
        except TrtbuildError as e:
            err = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e)))
            if sender is not None:
                sender.send(err, flags=FINAL)
            return None, err
        return (None, None) if sender is not None else (done, box)

    def finalize(self):
        self._outbox.put(None)
        self._metrics_stop.set()
        self.scheduler.shutdown()
        for t in (self.thread, self._sender, self._metrics):  # no Python thread outlives the stub
            t.join(10)
