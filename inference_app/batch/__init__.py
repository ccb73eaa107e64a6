"""`python -m inference_app batch`: a JSONL file of prompts through a server or the engine, resumably.

items (validate input) -> cli (workers) -> client (HTTP) | local (in-process orchestrator) -> store
(crash-safe journal). See `cli.py` for the command and `store.py` for the resume guarantees.
"""
