"""The frontend's side of Triton: one grpc.aio channel to the server, one bidirectional
ModelStreamInfer stream per generation, sending the ensemble's own inputs (upstream.ENSEMBLE_INPUTS:
names and dtypes) and reading its outputs as they come.

The request asks for the empty final response (`triton_enable_empty_final_response`, what
tritonclient's synchronous stream sets with enable_empty_final_response; its asyncio client cannot),
since an ensemble's last flag may come alone. The request stream stays open until that flag, and
closing `Triton.generate`'s iterator early cancels the gRPC call: Triton then cancels the request and the engine frees
its row.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from trtbuild.openai_api.protocol import APIError, Generation


@dataclass
class Chunk:
    """One response of the ensemble: its new text and what it says about the request so far."""

    text: str
    tokens: int                 # generated tokens in this response (num_output_tokens)
    log_probs: list[float]      # this response's tokens' log probabilities (when asked)
    drafted: int = 0            # the request's draft tokens so far (return_perf_metrics)
    accepted: int = 0
    final: bool = False


def ensemble_inputs(g: Generation, seed: int | None, streaming: bool) -> list:
    """The ensemble's input tensors for `g` ([1, 1] each, stop_words [1, k]). Temperature 0 is sent
    as top_k 1 (greedy for TensorRT-LLM's sampler as for the torch backend's)."""
    import tritonclient.grpc as grpcclient

    from trtbuild.serve.client import infer_inputs

    v: dict[str, np.ndarray] = {
        "text_input": np.array([[g.prompt.encode("utf-8")]], dtype=object),
        "max_tokens": np.array([[g.max_tokens]], dtype=np.int32),
        "stream": np.array([[streaming]], dtype=bool),
        "return_perf_metrics": np.array([[True]], dtype=bool),
        "return_num_output_tokens": np.array([[True]], dtype=bool),
    }
    if g.temperature == 0:
        v["top_k"] = np.array([[1]], dtype=np.int32)
    else:
        v["temperature"] = np.array([[g.temperature]], dtype=np.float32)
    if g.top_p < 1:
        v["top_p"] = np.array([[g.top_p]], dtype=np.float32)
    if seed is not None:
        v["seed"] = np.array([[seed]], dtype=np.uint64)
    if g.presence_penalty:
        v["presence_penalty"] = np.array([[g.presence_penalty]], dtype=np.float32)
    if g.frequency_penalty:
        v["frequency_penalty"] = np.array([[g.frequency_penalty]], dtype=np.float32)
    if g.min_tokens:
        v["min_tokens"] = np.array([[g.min_tokens]], dtype=np.int32)
    if g.stop:  # the engine stops on them where they are whole tokens; the frontend cuts at the text
        v["stop_words"] = np.array([[s.encode("utf-8") for s in g.stop]], dtype=object)
    if g.logprobs:
        v["return_log_probs"] = np.array([[True]], dtype=bool)
    return infer_inputs(grpcclient, v)


def _scalar(result, name: str, default=0):
    """The first value of an output (a Python scalar; bytes for BYTES), or `default` without it."""
    arr = result.as_numpy(name)
    if arr is None or arr.size == 0:
        return default
    v = arr.reshape(-1)[0]
    return v if isinstance(v, bytes) else v.item()


class Triton:
    """The channel to one tritonserver's gRPC endpoint and the model the frontend sends to."""

    def __init__(self, url: str, model: str = "ensemble", streaming: bool = True) -> None:
        self.url, self.model, self.streaming = url, model, streaming
        self._channel = None
        self._stub = None

    def _connect(self):
        if self._stub is None:
            import grpc
            from tritonclient.grpc import service_pb2_grpc

            self._channel = grpc.aio.insecure_channel(self.url, options=[
                ("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)])
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def ready(self) -> bool:
        import grpc
        from tritonclient.grpc import service_pb2

        try:
            r = await self._connect().ServerReady(service_pb2.ServerReadyRequest(), timeout=2)
            return bool(r.ready)
        except grpc.RpcError:
            return False

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def generate(self, g: Generation, seed: int | None, request_id: str) -> AsyncIterator[Chunk]:
        """Stream the ensemble's responses for `g`; closing the iterator early cancels the request.
        An error answer raises APIError (503 when the server is not there or not ready)."""
        import grpc
        from tritonclient.grpc import InferResult
        from tritonclient.grpc._utils import _get_inference_request

        request = _get_inference_request(
            model_name=self.model, inputs=ensemble_inputs(g, seed, self.streaming), model_version="",
            request_id=request_id, outputs=None, sequence_id=0, sequence_start=False, sequence_end=False,
            priority=0, timeout=None, parameters={"speculation": g.speculation} if g.speculation else None)
        # what tritonclient's sync stream sets for enable_empty_final_response=True
        # (tritonclient==2.73.0:tritonclient/grpc/_client.py:1929); Triton then marks every response
        # with the bool parameter triton_final_response, read below as serve/client.py reads it
        request.parameters["triton_enable_empty_final_response"].bool_param = True
        done = asyncio.Event()

        async def requests():
            yield request
            await done.wait()  # half-closing before the last response could end the stream early

        call = self._connect().ModelStreamInfer(requests())
        try:
            async for response in call:
                if response.error_message:  # a model refused it; the frontend's own checks came first
                    raise APIError(400, f"the server refused the request: {response.error_message}")
                result = InferResult(response.infer_response)
                params = response.infer_response.parameters
                final = "triton_final_response" not in params or params["triton_final_response"].bool_param
                text = _scalar(result, "text_output", b"")  # one string per beam; beam width 1
                lp = result.as_numpy("output_log_probs")
                yield Chunk(text=text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text),
                            tokens=int(_scalar(result, "num_output_tokens")),
                            log_probs=[] if lp is None else [float(x) for x in lp.reshape(-1)],
                            drafted=int(_scalar(result, "total_draft_tokens")),
                            accepted=int(_scalar(result, "total_accepted_draft_tokens")), final=final)
                if final:
                    return
            raise APIError(500, "the server ended the stream before the request's final response",
                           type="server_error")
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise APIError(503, f"the Triton server at {self.url} is not available: {e.details()}",
                               type="server_error") from None
            raise APIError(500, f"Triton: {e.details()}", type="server_error") from None
        finally:
            done.set()
            call.cancel()  # a no-op once the call has ended; else Triton cancels the request
