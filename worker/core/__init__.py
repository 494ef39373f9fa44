"""The kernel that ``worker`` and ``connectors`` share: the error tree, the connector contract (subject,
results, export writer), the rate-limit protocol and its value types, the S3 error mapping and the time
helpers.

It imports only the standard library and third-party libraries, never the rest of ``worker`` nor
``connectors``; ``.importlinter`` enforces this (see docs/architecture.md).
"""
