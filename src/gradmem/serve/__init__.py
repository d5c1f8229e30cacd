"""Serving: write a context once, keep its memory, answer many queries from it.

`engine` (one model, a memory store, write/ask/inspect), `batcher` (requests grouped into batches),
`service` (the HTTP API and the web page under `web/`), `store` and `memory_io` (memories as files),
`fidelity` (a memory's reconstruction report), `budget` and `http_guard` (limits and error statuses),
`cli_memory` (the `gradmem write/ask/store/serve` commands). Importing this package imports none of
them, so the core library never pulls in the HTTP stack.
"""
