"""GraphQL documents answered without per-field resolution.

A dashboard's usual query, `leadsByChatflow(chatflowid: ...) { <lead fields> }`,
and a chat widget's usual mutation, `createLead(input: $input) { <lead fields> }`,
need no Strawberry machinery once Strawberry has validated the document (the first
time it is seen, with every limit): later requests with it go straight to
`resolvers.leads_json` (the database renders the list) or `resolvers.create_lead`,
with the same checks. Anything else (fragments, directives, other fields, inputs
that need coercion) takes the ordinary path.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from graphql import (
    FieldNode,
    GraphQLSyntaxError,
    NamedTypeNode,
    NonNullTypeNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    VariableNode,
    parse,
)

from leads_gql.models import INPUT_FIELDS, LeadRow, lead_to_dict
from leads_gql.store.json_lists import ALL_FIELDS, Keys

_SELECTABLE = frozenset(ALL_FIELDS) | {"__typename"}
_INPUT_FIELDS = frozenset(wire for wire, _, _ in INPUT_FIELDS)
_MAX_PLANS = 512
# The database builds each list object with one json_build_object (PostgreSQL)
# or json_object (SQLite) call: PostgreSQL takes at most 100 arguments, a key and
# a value per field. More keys (aliases allow up to 58) take the ordinary path.
MAX_LIST_KEYS = 50


@dataclasses.dataclass(frozen=True, slots=True)
class ListPlan:
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


@dataclasses.dataclass(frozen=True, slots=True)
class CreatePlan:
    operation_name: str | None
    response_key: str
    keys: Keys
    variable: str
    field: FieldNode  # where errors point (`locations`), as Strawberry's do

    def input(self, variables: dict[str, Any] | None) -> dict[str, Any] | None:
        """The `LeadInput` as given, when GraphQL's coercion would pass it through
        unchanged (known fields, strings or nulls, a `chatflowid`); else None."""
        value = (variables or {}).get(self.variable)
        if (
            not isinstance(value, dict)
            or not value.keys() <= _INPUT_FIELDS
            or not isinstance(value.get("chatflowid"), str)
            or any(not isinstance(v, str | None) for v in value.values())
        ):
            return None
        return value

    def render(self, lead: LeadRow) -> dict[str, Any]:
        """The selected fields, as Strawberry would print them."""
        fields = {**lead_to_dict(lead), "__typename": "Lead"}
        return {key: fields[field] for key, field in self.keys}


Plan = ListPlan | CreatePlan


def compile_plan(query: str) -> Plan | None:
    """A plan for a document of one of the two shapes above, else None."""
    try:
        document = parse(query)
    except GraphQLSyntaxError:
        return None
    if len(document.definitions) != 1:
        return None
    operation = document.definitions[0]
    if (
        not isinstance(operation, OperationDefinitionNode)
        or operation.directives
        or len(operation.selection_set.selections) != 1
    ):
        return None
    root = operation.selection_set.selections[0]
    if (
        not isinstance(root, FieldNode)
        or root.directives
        or root.selection_set is None
        or len(root.arguments or ()) != 1
        or (keys := _plain_keys(root.selection_set)) is None
    ):
        return None
    name = operation.name.value if operation.name else None
    response_key = root.alias.value if root.alias else root.name.value
    value = (root.arguments or ())[0].value
    variables = operation.variable_definitions or ()
    if operation.operation is OperationType.QUERY:
        if root.name.value != "leadsByChatflow":
            return None
        literal = value.value if isinstance(value, StringValueNode) else None
        variable = value.name.value if isinstance(value, VariableNode) else None
        if (literal is None and variable is None) or len(keys) > MAX_LIST_KEYS:
            return None
        if variable is not None and any(d.default_value is not None for d in variables):
            return None
        return ListPlan(name, response_key, keys, literal, variable)
    if (
        operation.operation is OperationType.MUTATION
        and root.name.value == "createLead"
        and isinstance(value, VariableNode)
        and len(variables) == 1
        and variables[0].default_value is None
        and not variables[0].directives
        and isinstance(variables[0].type, NonNullTypeNode)
        and isinstance(variables[0].type.type, NamedTypeNode)
        and variables[0].type.type.name.value == "LeadInput"
    ):
        return CreatePlan(name, response_key, keys, value.name.value, root)
    return None


def _plain_keys(selection_set: SelectionSetNode) -> Keys | None:
    """Response key -> lead field, when every selection is a plain lead field."""
    keys: dict[str, str] = {}
    for selection in selection_set.selections:
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
    return tuple(keys.items())


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
        self._plans[query] = compile_plan(query)
        if len(self._plans) > _MAX_PLANS:
            self._plans.popitem(last=False)
