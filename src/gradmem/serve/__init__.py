"""Serving: write a context once, keep its memory, answer many queries from it.

`engine` (one model, a memory store, write/ask/inspect), `batcher` (requests grouped into batches),
`service` (the HTTP API and the web page under `web/`), `store` (memories as files, in the format
of gradmem.core.memory_file), `fidelity` (a memory's reconstruction report), `budget` and
`http_guard` (limits and error statuses); the `gradmem write/ask/store/serve` commands are
gradmem.cli.memory_commands. Importing this package imports none of them, so the core library
never pulls in the HTTP stack.
"""
