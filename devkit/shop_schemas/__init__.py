"""Sample schemas of the retailer's internal systems, for the demo, the tests and the generator.

Each module defines one system's tables on its own ``MetaData`` (SQLAlchemy Core), portable to
SQLite and PostgreSQL. The connectors do not import these: they reflect whatever database their
config points at, so a real deployment brings its own schema and a matching rule set.
"""
