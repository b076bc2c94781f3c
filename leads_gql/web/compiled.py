"""GraphQL documents answered without per-field resolution.

A dashboard's usual queries, `leadsByChatflow(chatflowid: ...) { <lead fields> }`
and a `leads` page of plain selections, and a chat widget's usual mutation,
`createLead(input: $input) { <lead fields> }`, need no Strawberry machinery once
Strawberry has validated the document (the first time it is seen, with every
limit): later requests with it go straight to `resolvers.leads_json` (the
database renders the list), `resolvers.leads_page` or `resolvers.create_lead`,
with the same checks. An error, a value GraphQL would coerce, and anything else
(fragments, directives, other fields) take the ordinary path, which answers it.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from graphql import (
    EnumValueNode,
    FieldNode,
    GraphQLSyntaxError,
    IntValueNode,
    NamedTypeNode,
    NonNullTypeNode,
    NullValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    VariableDefinitionNode,
    VariableNode,
    parse,
)

from leads_gql.models import INPUT_FIELDS, LeadRow, lead_to_dict
from leads_gql.paging import Order
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


# `leads` arguments: the resolver's keyword, and the JSON type a variable must
# have to pass GraphQL's coercion unchanged (else the ordinary path decides).
_PAGE_ARGUMENTS: dict[str, tuple[str, type]] = {
    "chatflowid": ("chatflowid", str),
    "first": ("first", int),
    "after": ("after", str),
    "last": ("last", int),
    "before": ("before", str),
    "search": ("search", str),
    "createdAfter": ("created_after", str),
    "createdBefore": ("created_before", str),
    "orderBy": ("order", str),
}
_ORDERS = frozenset(order.value for order in Order)
_PAGE_INFO = frozenset(
    {"hasNextPage", "hasPreviousPage", "startCursor", "endCursor", "__typename"}
)
_TYPENAMES = {"connection": "LeadConnection", "edge": "LeadEdge", "info": "PageInfo"}
# (response key, field, the selection under it) of an object in the answer.
Selection = tuple[tuple[str, str, Any], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class PagePlan:
    """A `leads` page of plain selections: edges (cursor, node's lead fields),
    pageInfo, totalCount, __typename; arguments as literals or variables."""

    operation_name: str | None
    response_key: str
    # argument -> ("literal", value) or ("variable", name)
    arguments: tuple[tuple[str, tuple[str, Any]], ...]
    selection: Selection
    counts: bool

    def resolver_arguments(
        self, variables: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The resolver's keywords, or None when coercion could change a value."""
        given: dict[str, Any] = {}
        for name, (kind, value) in self.arguments:
            if kind == "variable":
                if value not in (variables or {}):
                    continue  # not provided: the argument's default
                value = (variables or {})[value]
            keyword, kind_of = _PAGE_ARGUMENTS[name]
            if value is not None and (
                type(value) is not kind_of
                or (name == "orderBy" and value not in _ORDERS)
            ):
                return None
            given[keyword] = value
        if "chatflowid" not in given:
            return None
        given["order"] = Order(given.get("order") or Order.OLDEST_FIRST.value)
        return given

    def render(
        self, leads: Sequence[LeadRow], cursors: Sequence[str], **info: Any
    ) -> Any:
        """The connection as Strawberry would print it."""
        nodes = [{**lead_to_dict(lead), "__typename": "Lead"} for lead in leads]
        values = {
            "totalCount": info["total"],
            "__typename": _TYPENAMES["connection"],
            "pageInfo": {
                "hasNextPage": info["has_next"],
                "hasPreviousPage": info["has_previous"],
                "startCursor": cursors[0] if cursors else None,
                "endCursor": cursors[-1] if cursors else None,
                "__typename": _TYPENAMES["info"],
            },
        }
        answer: dict[str, Any] = {}
        for key, field, under in self.selection:
            if field == "edges":
                answer[key] = [
                    _edge(under, node, cursor)
                    for node, cursor in zip(nodes, cursors, strict=True)
                ]
            elif field == "pageInfo":
                answer[key] = {k: values["pageInfo"][f] for k, f, _ in under}
            else:
                answer[key] = values[field]
        return answer


def _edge(selection: Selection, node: dict[str, Any], cursor: str) -> dict[str, Any]:
    edge: dict[str, Any] = {}
    for key, field, under in selection:
        if field == "node":
            edge[key] = {k: node[f] for k, f in under}
        else:
            edge[key] = cursor if field == "cursor" else _TYPENAMES["edge"]
    return edge


Plan = ListPlan | CreatePlan | PagePlan


def compile_plan(query: str) -> Plan | None:
    """A plan for a document of one of the shapes above, else None."""
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
    if not isinstance(root, FieldNode) or root.directives or root.selection_set is None:
        return None
    name = operation.name.value if operation.name else None
    response_key = root.alias.value if root.alias else root.name.value
    variables = operation.variable_definitions or ()
    if operation.operation is OperationType.QUERY and root.name.value == "leads":
        return _page_plan(name, response_key, root, variables)
    if (
        len(root.arguments or ()) != 1
        or (keys := plain_keys(root.selection_set)) is None
    ):
        return None
    value = (root.arguments or ())[0].value
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


def _page_plan(
    name: str | None,
    response_key: str,
    root: FieldNode,
    variables: tuple[VariableDefinitionNode, ...] | Any,
) -> PagePlan | None:
    if any(d.default_value is not None or d.directives for d in variables):
        return None
    arguments: list[tuple[str, tuple[str, Any]]] = []
    for argument in root.arguments or ():
        value = argument.value
        if argument.name.value not in _PAGE_ARGUMENTS:
            return None
        if isinstance(value, VariableNode):
            arguments.append((argument.name.value, ("variable", value.name.value)))
        elif isinstance(value, StringValueNode | EnumValueNode):
            arguments.append((argument.name.value, ("literal", value.value)))
        elif isinstance(value, IntValueNode):
            arguments.append((argument.name.value, ("literal", int(value.value))))
        elif isinstance(value, NullValueNode):
            arguments.append((argument.name.value, ("literal", None)))
        else:
            return None
    assert root.selection_set is not None
    selection = _object(root.selection_set, _CONNECTION)
    if selection is None:
        return None
    counts = any(field == "totalCount" for _, field, _ in selection)
    return PagePlan(name, response_key, tuple(arguments), selection, counts)


# What each object of a page may select: leaf fields, or objects and theirs.
_NODE = "node"
_CONNECTION: dict[str, Any] = {
    "edges": {"cursor": None, "node": _NODE, "__typename": None},
    "pageInfo": dict.fromkeys(_PAGE_INFO),
    "totalCount": None,
    "__typename": None,
}


def _object(
    selection_set: SelectionSetNode, allowed: dict[str, Any]
) -> Selection | None:
    """Plain, unrepeated selections of the allowed fields (else None)."""
    chosen: list[tuple[str, str, Any]] = []
    keys: set[str] = set()
    for selection in selection_set.selections:
        if (
            not isinstance(selection, FieldNode)
            or selection.name.value not in allowed
            or selection.arguments
            or selection.directives
        ):
            return None
        key = selection.alias.value if selection.alias else selection.name.value
        if key in keys:
            return None  # merging repeated keys is the ordinary path's
        keys.add(key)
        field, under = selection.name.value, allowed[selection.name.value]
        if under is None:
            if selection.selection_set is not None:
                return None
            chosen.append((key, field, None))
            continue
        if selection.selection_set is None:
            return None
        if under == _NODE:
            nested: Any = plain_keys(selection.selection_set)
        else:
            nested = _object(selection.selection_set, under)
        if nested is None:
            return None
        chosen.append((key, field, nested))
    return tuple(chosen)


def plain_keys(selection_set: SelectionSetNode) -> Keys | None:
    """Response key -> lead field when every selection is a plain lead field;
    a repeated key is printed once, where it first appears (GraphQL merges it).
    (Also read by web/live_frames.py, before Strawberry has validated.)"""
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
        if keys.setdefault(key, selection.name.value) != selection.name.value:
            return None  # two fields under one key: Strawberry refuses it
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
