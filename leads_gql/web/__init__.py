"""The HTTP edge: connections, middleware, bodies, REST and GraphQL over HTTP,
the pages and the OpenAPI document."""
