"""The HTTP server, the outermost layer of serving: server -> orchestrator -> engine -> model.

`cli` (flags, uvicorn, SIGTERM drain) runs the app that `app.create_app` builds; a request goes
`routes_*` (thin) -> `serving*` (logic) -> the orchestrator, in and out through `protocol` models.
"""
