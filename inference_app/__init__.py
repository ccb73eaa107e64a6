"""JAX inference server: model -> engine -> orchestrator -> server (see README)."""
