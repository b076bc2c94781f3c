"""GraphQL documents that one SQL statement answers whole.

A dashboard's usual query, `leadsByChatflow(chatflowid: ...) { <lead fields> }`,
needs no per-field resolution: once Strawberry has validated the document (the
first time it is seen, with every limit), later requests with it are answered by
`resolvers.leads_json`, with the same checks, and the database renders the list.
Anything else (fragments, directives, other fields, errors) takes the ordinary path.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from graphql import (
    FieldNode,
    GraphQLSyntaxError,
    OperationDefinitionNode,
    OperationType,
    StringValueNode,
    VariableNode,
    parse,
)

from leads_gql.json_lists import ALL_FIELDS, Keys

_SELECTABLE = frozenset(ALL_FIELDS) | {"__typename"}
_MAX_PLANS = 512


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    operation_name: str | None
    response_key: str
    keys: Keys
    literal: str | None = None
    variable: str | None = None

    def chatflowid(self, variables: dict[str, Any] | None) -> str | None:
        """The argument's value, or None when the ordinary path must decide."""
        if self.literal is not None:
            return self.literal
        value = (variables or {}).get(self.variable or "")
        return value if isinstance(value, str) else None


def compile_list_query(query: str) -> Plan | None:
    """A plan for a `leadsByChatflow` list query of plain fields, else None."""
    try:
        document = parse(query, no_location=True)
    except GraphQLSyntaxError:
        return None
    if len(document.definitions) != 1:
        return None
    operation = document.definitions[0]
    if (
        not isinstance(operation, OperationDefinitionNode)
        or operation.operation is not OperationType.QUERY
        or operation.directives
        or len(operation.selection_set.selections) != 1
    ):
        return None
    root = operation.selection_set.selections[0]
    if (
        not isinstance(root, FieldNode)
        or root.name.value != "leadsByChatflow"
        or root.directives
        or root.selection_set is None
        or len(root.arguments or ()) != 1
    ):
        return None
    value = (root.arguments or ())[0].value
    literal = value.value if isinstance(value, StringValueNode) else None
    variable = value.name.value if isinstance(value, VariableNode) else None
    if literal is None and variable is None:
        return None
    if variable is not None and any(
        d.default_value is not None for d in operation.variable_definitions or ()
    ):
        return None
    keys: dict[str, str] = {}
    for selection in root.selection_set.selections:
        if (
            not isinstance(selection, FieldNode)
            or selection.name.value not in _SELECTABLE
            or selection.arguments
            or selection.directives
            or selection.selection_set is not None
        ):
            return None
        key = selection.alias.value if selection.alias else selection.name.value
        keys.setdefault(key, selection.name.value)  # GraphQL merges repeated keys
    return Plan(
        operation_name=operation.name.value if operation.name else None,
        response_key=root.alias.value if root.alias else "leadsByChatflow",
        keys=tuple(keys.items()),
        literal=literal,
        variable=variable,
    )


class Plans:
    """Plans of documents that validated; bounded, most recently used kept."""

    def __init__(self) -> None:
        self._plans: OrderedDict[str, Plan | None] = OrderedDict()

    def get(self, query: str, operation_name: str | None) -> Plan | None:
        plan = self._plans.get(query)
        if plan is None:
            return None
        self._plans.move_to_end(query)
        if operation_name is not None and operation_name != plan.operation_name:
            return None
        return plan

    def learn(self, query: str) -> None:
        """Remember a document that Strawberry has just validated and run."""
        if query in self._plans:
            return
        self._plans[query] = compile_list_query(query)
        if len(self._plans) > _MAX_PLANS:
            self._plans.popitem(last=False)
