"""One module per system behind the small ``Connector`` protocol of ``worker.core.connector``."""
