"""`python -m inference_app loadtest` (alias `bench`): a load generator for any OpenAI-compatible server.

cli (flags) -> runner (load shape) -> dataset (prompts) + client (one timed streamed request) ->
metrics (summary). A client of the server, never of the engine: it imports no JAX. The top-level
`bench/` folder holds experiments and recorded results that use it.
"""
