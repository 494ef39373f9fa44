"""One module per system behind the small ``Connector`` protocol of ``connectors.base``."""
