"""An OpenAI-compatible API in front of a trtbuild Triton repository: `protocol` (request checks and
response shapes, pure), `triton` (the asyncio gRPC stream to the ensemble), `app` (FastAPI routes and
the uvicorn thread that `trtbuild serve --openai-port` and `trtbuild openai` run).

May import: trtbuild.common, trtbuild.runtime.tokenizer, trtbuild.serve (the layer below).
"""
