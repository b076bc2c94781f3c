"""Storage: the engine and connections, the SQL requests run, migrations."""
