"""Triton Python model `tensorrt_llm` for the torch backend (written by trtbuild): the reference
runtime's in-flight batching scheduler behind the tensorrtllm backend's tensor names."""

import json
import os
import queue
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from trtbuild.errors import TrtbuildError
from trtbuild.runtime import Model, Request, SamplingParams
from trtbuild.runtime.scheduler import Scheduler
from trtbuild.runtime.tokenizer import default_end_ids
from trtbuild.triton_repo.python_models import Holdback, cancel_dir, load_tokenizer, tag_tokens, words_from_list

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _opt(request, name, default=None):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return default if t is None else t.as_numpy().reshape(-1)


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        engine = Path(args["model_repository"]) / p["engine_dir"]
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(cfg)
        self.end_ids = default_end_ids(engine)
        self.cancelled = cancel_dir()
        has_tok = (engine / "tokenizer.json").is_file() or (engine / "tokenizer.model").is_file()
        self.tokenizer = load_tokenizer(engine) if has_tok else None
        # The model is loaded, and the scheduler runs, in one thread of its own: on CPU, OpenMP
        # keeps a thread team per thread, and packing the weights in another thread made every
        # step ~35 % slower (see Scheduler.run_forever).
        booted, failure = threading.Event(), {}

        def boot():
            try:
                threads = os.environ.get("TRTBUILD_CPU_THREADS")
                if threads:
                    import torch

                    torch.set_num_threads(int(threads))
                model = Model.load(engine)
                build = json.loads((engine / "config.json").read_text())["build_config"]
                draft = int(build.get("max_draft_len") or 0)
                self.scheduler = Scheduler(model, int(build["max_batch_size"]), int(build["max_seq_len"]) - draft,
                                           int(build["max_num_tokens"]))
            except BaseException as e:  # noqa: BLE001 (re-raised in initialize)
                failure["error"] = e
                booted.set()
                return
            booted.set()
            self.scheduler.run_forever()

        self.thread = threading.Thread(target=boot, name="trtbuild-scheduler", daemon=True)
        self.thread.start()
        booted.wait()
        if failure:
            raise failure["error"]
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
                sender.send(response, flags=flags)
            except Exception:  # noqa: BLE001 (the client is gone: nothing to deliver to)
                pass

    def _export_metrics(self):
        """The scheduler's statistics as Prometheus gauges on Triton's metrics endpoint."""
        names = {"active": "active requests (rows decoding)", "waiting": "requests waiting for a row",
                 "steps": "scheduler steps", "admitted": "requests admitted",
                 "joined_running_batch": "requests admitted while others were mid-decode",
                 "finished": "requests finished", "cancelled": "requests cancelled (client gone)",
                 "max_active": "most rows decoding at once", "tokens_generated": "output tokens"}
        gauges = {}
        self._families = []  # a family must outlive its metrics
        for key, text in names.items():
            family = pb_utils.MetricFamily(name=f"trtbuild_scheduler_{key}", description=text,
                                           kind=pb_utils.MetricFamily.GAUGE)
            self._families.append(family)
            gauges[key] = family.Metric(labels={"model": "tensorrt_llm"})
        while not self._metrics_stop.wait(0.2):
            stats = self.scheduler.stats
            for key, metric in gauges.items():
                metric.set(float(getattr(stats, key)))

    def _request(self, request) -> tuple[Request, bool]:
        ids = _opt(request, "input_ids")
        n = int(_opt(request, "input_lengths", [len(ids)])[0])
        end = _opt(request, "end_id")
        ends = tuple(dict.fromkeys(([int(end[0])] if end is not None else []) + list(self.end_ids)))
        stop = _opt(request, "stop_words_list")
        sampling = SamplingParams(temperature=float(_opt(request, "temperature", [0.0])[0]),
                                  top_k=int(_opt(request, "runtime_top_k", [0])[0]),
                                  top_p=float(_opt(request, "runtime_top_p", [1.0])[0]) or 1.0,
                                  seed=None if _opt(request, "random_seed") is None
                                  else int(_opt(request, "random_seed")[0]))
        req = Request(tuple(int(t) for t in ids[:n]), int(_opt(request, "request_output_len")[0]), sampling, ends,
                      words_from_list(stop) if stop is not None and stop.size else ())
        return req, bool(_opt(request, "streaming", [False])[0])

    @staticmethod
    def _response(tokens, job_stats, job_id):
        steps, accepted, drafted = job_stats
        rate = accepted / drafted if drafted else 0.0
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("output_ids", np.array(tag_tokens(tokens, job_id), dtype=np.int32).reshape(1, 1, -1)),
            pb_utils.Tensor("sequence_length", np.array([[len(tokens)]], dtype=np.int32)),
            pb_utils.Tensor("acceptance_rate", np.array([[rate]], dtype=np.float32)),
            pb_utils.Tensor("total_accepted_draft_tokens", np.array([[accepted]], dtype=np.int32)),
            pb_utils.Tensor("total_draft_tokens", np.array([[drafted]], dtype=np.int32)),
        ])

    def execute(self, requests):
        waits = []
        for request in requests:
            sender = request.get_response_sender() if self.decoupled else None
            try:
                req, streaming = self._request(request)
            except (TrtbuildError, ValueError, TypeError) as e:
                err = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e)))
                if sender:
                    sender.send(err, flags=FINAL)
                else:
                    waits.append((None, err))
                continue
            waits.append(self._submit(req, streaming, sender))
        if self.decoupled:
            return None
        out = []
        for done, box in waits:
            if done is not None:
                done.wait()
            out.append(box if done is None else box["response"])
        return out

    def _submit(self, req, streaming, sender):
        done, box = threading.Event(), {}
        hold = Holdback(self.tokenizer)
        collected = []
        state = {"id": self.scheduler.reserve_id()}
        sched = self.scheduler

        def on_tokens(tokens, result):
            flag = self.cancelled / str(state["id"])
            if (sender is not None and sender.is_cancelled()) or flag.exists():
                flag.unlink(missing_ok=True)
                sched.cancel(state["id"])
                return
            job = sched.progress(state["id"])
            if streaming and sender is not None:
                chunk = hold.push(tokens, result is not None)
                if chunk or result is not None:
                    self._outbox.put((sender, self._response(chunk, job, state["id"]), FINAL if result is not None else 0))
                return
            collected.extend(tokens)
            if result is not None:
                resp = self._response(collected, job, state["id"])
                if sender is not None:
                    self._outbox.put((sender, resp, FINAL))
                box["response"] = resp
                done.set()

        try:
            sched.submit(req, on_tokens, job_id=state["id"])
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
