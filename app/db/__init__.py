"""Database: engine and sessions, the embedded server, typed models, migrations."""
