"""``oubli web``: Meta's data deletion callback, a status page per confirmation code, a support lookup.

A separate process from the worker (``oubli web``); it reads the store and publishes ordinary erasure
commands, so the worker carries the request out like any other. docs/web.md has the security model.
"""
