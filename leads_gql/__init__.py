"""leads-gql: a GraphQL leads service with a Flowise-compatible REST shim."""

__version__ = "0.1.0"
