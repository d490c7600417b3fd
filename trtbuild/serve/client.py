"""Minimal Triton clients for the ensemble: one streamed request over gRPC or HTTP
(`trtbuild ask`), and a non-streamed HTTP `/generate`. tritonclient is imported lazily."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np

from trtbuild.common.errors import TrtbuildError


class ServerError(TrtbuildError):
    """The server answered a request with an error."""


class UnreachableError(TrtbuildError):
    """No Triton server answers at the URL (nothing listening, or not that protocol)."""


def _unreachable(url: str, e: BaseException) -> UnreachableError:
    """One line for an HTTP request that got no HTTP answer: refused, timed out, or not HTTP/1.1."""
    import http.client

    if isinstance(e, http.client.HTTPException):  # BadStatusLine, RemoteDisconnected: another protocol
        return UnreachableError(f"{url} does not answer HTTP ({type(e).__name__}): is it the gRPC port? give the "
                                "HTTP port, or use --protocol grpc")
    why = getattr(e, "reason", None) or e
    why = getattr(why, "strerror", None) or why
    return UnreachableError(f"cannot reach a Triton HTTP server at {url}: {why}")


def check_text_model(url: str, model: str, protocol: str = "grpc", timeout: float = 10.0) -> None:
    """Raise (one line) unless a server answers at `url` and `model` takes text (a text_input): the
    ensemble and tensorrt_llm_bls do, tensorrt_llm takes token ids."""
    import http.client

    if protocol == "grpc":
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        try:
            with grpcclient.InferenceServerClient(url) as client:
                meta = client.get_model_metadata(model, as_json=True, client_timeout=timeout)
        except InferenceServerException as e:
            text = " ".join(str(e).split())
            if "Request for unknown model" in text or "is not found" in text:
                raise ServerError(f"the server at {url} has no model {model!r}") from None
            if "Connection refused" in text:
                raise UnreachableError(f"cannot reach a Triton gRPC server at {url}: connection refused") from None
            raise UnreachableError(f"cannot reach a Triton gRPC server at {url} (is it the HTTP port? then use "
                                   f"--protocol http): {text}") from None
        names = [i["name"] for i in meta.get("inputs", [])]
    else:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/models/{model}", timeout=timeout) as r:
                names = [i["name"] for i in json.loads(r.read()).get("inputs", [])]
        except urllib.error.HTTPError as e:
            raise ServerError(f"the server at {url} has no model {model!r}: {_error_text(e.read())}") from None
        except (http.client.HTTPException, OSError) as e:
            raise _unreachable(f"http://{url}", e) from None
    if "text_input" not in names:
        raise ServerError(f"model {model!r} takes no text (its inputs: {', '.join(names)}; tensorrt_llm takes token "
                          "ids): ask talks to the text models, ensemble and tensorrt_llm_bls")


# What a streamed response may carry besides text_output: with return_perf_metrics (which these
# clients send) both backends return the ten perf outputs, acceptance among them.
STATS = ("kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks", "arrival_time_ns",
         "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns", "acceptance_rate",
         "total_accepted_draft_tokens", "total_draft_tokens")


def _inputs(mod, prompt: str, max_tokens: int, stream: bool, extra: dict | None = None) -> list:
    values = {"text_input": np.array([[prompt.encode("utf-8")]], dtype=object),
              "max_tokens": np.array([[max_tokens]], dtype=np.int32),
              "stream": np.array([[stream]], dtype=bool),
              "return_perf_metrics": np.array([[True]], dtype=bool)}
    for k, v in (extra or {}).items():
        values[k] = v
    return infer_inputs(mod, values)


_TRITON_DTYPES = {np.dtype(object): "BYTES", np.dtype(np.int32): "INT32", np.dtype(bool): "BOOL",
                  np.dtype(np.float32): "FP32", np.dtype(np.uint64): "UINT64", np.dtype(np.float16): "FP16",
                  np.dtype(np.int64): "INT64"}


def infer_inputs(mod, values: dict[str, np.ndarray]) -> list:
    """tritonclient InferInputs (`mod`: tritonclient.grpc or .http) for named arrays, each with the
    Triton datatype of its numpy dtype."""
    out = []
    for name, arr in values.items():
        t = mod.InferInput(name, list(arr.shape), _TRITON_DTYPES[arr.dtype])
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def stream_grpc(url: str, prompt: str, max_tokens: int, model: str = "ensemble",
                extra: dict | None = None, timeout: float = 600, parameters: dict | None = None) -> Iterator[dict]:
    """Yield each streamed response as {"text_output", ...}; raises ServerError on an error.
    extra: more input tensors; parameters: Triton request parameters (e.g. typical acceptance)."""
    import tritonclient.grpc as grpcclient

    q: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        client.async_stream_infer(model, _inputs(grpcclient, prompt, max_tokens, True, extra),
                                  enable_empty_final_response=True, parameters=parameters)
        while True:
            result, error = q.get(timeout=timeout)
            if error is not None:
                raise ServerError(str(error))
            resp = result.get_response()
            final = resp.parameters.get("triton_final_response")
            out = _outputs(result)
            if out:
                yield out
            if final is not None and final.bool_param:
                return
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def _outputs(result) -> dict:
    out = {}
    for name in ("text_output", *STATS):
        arr = result.as_numpy(name)
        if arr is None:
            continue
        v = arr.reshape(-1)[0]
        out[name] = v.decode("utf-8") if isinstance(v, bytes) else v.item()
    return out


def _post(url: str, body: dict, timeout: float) -> urllib.request.Request:
    return urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def generate_http(url: str, prompt: str, max_tokens: int, model: str = "ensemble", extra: dict | None = None,
                  timeout: float = 600) -> dict:
    """POST /v2/models/{model}/generate: one JSON answer."""
    import http.client

    body = {"text_input": prompt, "max_tokens": max_tokens, "return_perf_metrics": True, **(extra or {})}
    target = f"http://{url}/v2/models/{model}/generate"
    try:
        with urllib.request.urlopen(_post(target, body, timeout), timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise ServerError(_error_text(e.read())) from None
    except (http.client.HTTPException, OSError) as e:
        raise _unreachable(target, e) from None


def stream_http(url: str, prompt: str, max_tokens: int, model: str = "ensemble", extra: dict | None = None,
                timeout: float = 600) -> Iterator[dict]:
    """POST /v2/models/{model}/generate_stream: yield each server-sent event's JSON."""
    import http.client

    body = {"text_input": prompt, "max_tokens": max_tokens, "stream": True, "return_perf_metrics": True,
            **(extra or {})}
    target = f"http://{url}/v2/models/{model}/generate_stream"
    try:
        with urllib.request.urlopen(_post(target, body, timeout), timeout=timeout) as r:
            for raw in r:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    raise ServerError(event["error"])
                yield event
    except urllib.error.HTTPError as e:
        raise ServerError(_error_text(e.read())) from None
    except (http.client.HTTPException, OSError) as e:
        raise _unreachable(target, e) from None


def _error_text(raw: bytes) -> str:
    try:
        return json.loads(raw).get("error", raw.decode("utf-8", "replace"))
    except (json.JSONDecodeError, AttributeError):
        return raw.decode("utf-8", "replace")
