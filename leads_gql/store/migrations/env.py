"""Alembic environment: runs on the connection that `leads_gql.db` hands it."""

from alembic import context
from sqlmodel import SQLModel

import leads_gql.models  # noqa: F401  (registers the tables on the metadata)
from leads_gql.store.db import include_object

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `leads-gql migrate`")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=include_object,
)
with context.begin_transaction():
    context.run_migrations()
