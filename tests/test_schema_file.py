from pathlib import Path

from leads_gql.web.schema import schema

SCHEMA_FILE = Path(__file__).parent.parent / "schema.graphql"


def test_schema_file_is_the_export() -> None:
    """`schema.graphql` must be regenerated with `leads-gql export-schema`."""
    assert SCHEMA_FILE.read_text() == schema.as_str() + "\n"
