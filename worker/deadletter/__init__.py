"""The dead-letter tools behind ``oubli dlq``: ``topic`` reads the dead-letter topic (records, replay
cursors, summary, the DLQ header names), ``reissue`` decides which dead letters go back under a new
request_id, and ``replay`` is the ``oubli dlq`` command group that summarises and replays them."""
