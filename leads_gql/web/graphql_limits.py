"""Bounds on GraphQL documents, checked before anything runs.

Strawberry's maintained limiters cap tokens (at parse) and aliases; the depth
rule here counts every field, introspection fields included (Strawberry's
QueryDepthLimiter skips `__schema` and friends, which is where deep documents
hurt), and one more rule insists on an operation name when a document has several.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    parse,
)
from strawberry.extensions import AddValidationRules, MaxTokensLimiter, SchemaExtension
from strawberry.extensions.max_aliases import create_validator as create_aliases_rule

# GraphiQL's own schema query is 13 fields deep and about 400 tokens.
MAX_DEPTH = 15
MAX_ALIASES = 50
MAX_TOKENS = 2000
# Fields that answer with every lead of a flow, and how many one request (a
# document, or all of a batch) may select: aliases and batches otherwise multiply
# one list into hundreds (10 x 50 lists of a 2,000-lead flow built 329 MB).
LIST_FIELDS = frozenset({"leadsByChatflow"})
MAX_LISTS = 5


def depth_rule(max_depth: int) -> type[ValidationRule]:
    class MaxDepth(ValidationRule):
        def enter_operation_definition(
            self, node: OperationDefinitionNode, *_: Any
        ) -> None:
            fragments = {
                d.name.value: d
                for d in self.context.document.definitions
                if isinstance(d, FragmentDefinitionNode)
            }
            if _depth(node.selection_set, fragments, max_depth + 1) > max_depth:
                name = node.name.value if node.name else "anonymous"
                self.report_error(
                    GraphQLError(
                        f"'{name}' exceeds the maximum operation depth of {max_depth}",
                        node,
                    )
                )

    return MaxDepth


def _depth(
    selections: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    budget: int,
    visiting: frozenset[str] = frozenset(),
) -> int:
    """Field depth of a selection set, never exploring past `budget` levels."""
    if selections is None or budget <= 0:
        return 0
    deepest = 0
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            depth = 1 + _depth(selection.selection_set, fragments, budget - 1, visiting)
        elif isinstance(selection, InlineFragmentNode):
            depth = _depth(selection.selection_set, fragments, budget, visiting)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:  # reported by other rules
                continue
            depth = _depth(fragment.selection_set, fragments, budget, visiting | {name})
        else:
            continue
        deepest = max(deepest, depth)
        if deepest >= budget:
            break
    return deepest


@functools.lru_cache(maxsize=512)
def list_selections(query: str, operation_name: str | None) -> int:
    """How many LIST_FIELDS the operation selects, fragments expanded (each
    selection counts); 0 for a document that does not parse, which is refused
    later with its syntax error."""
    try:
        document = parse(query, no_location=True, max_tokens=MAX_TOKENS)
    except GraphQLError:
        return 0
    fragments: dict[str, FragmentDefinitionNode] = {}
    operations: list[OperationDefinitionNode] = []
    for definition in document.definitions:
        if isinstance(definition, FragmentDefinitionNode):
            fragments[definition.name.value] = definition
        elif isinstance(definition, OperationDefinitionNode):
            operations.append(definition)
    if operation_name is not None:
        operations = [
            o for o in operations if o.name and o.name.value == operation_name
        ]
    counted: dict[str, int] = {}  # per fragment, so shared fragments cost once

    def count(selections: SelectionSetNode | None, visiting: frozenset[str]) -> int:
        total = 0
        for selection in selections.selections if selections else ():
            if isinstance(selection, FieldNode):
                total += selection.name.value in LIST_FIELDS
                total += count(selection.selection_set, visiting)
            elif isinstance(selection, InlineFragmentNode):
                total += count(selection.selection_set, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in visiting or name not in fragments:
                    continue  # a cycle or an unknown fragment: refused by validation
                if name not in counted:
                    counted[name] = count(
                        fragments[name].selection_set, visiting | {name}
                    )
                total += counted[name]
        return total

    return max((count(o.selection_set, frozenset()) for o in operations), default=0)


class OperationChoice(SchemaExtension):
    """A document with several operations needs `operationName` (GraphQL spec)."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        # The name the client gave (Strawberry's public property falls back to
        # the first operation's, which is what must not happen here).
        given = getattr(context, "_provided_operation_name", None)
        if document is not None and given is None:
            operations = [
                d
                for d in document.definitions
                if isinstance(d, OperationDefinitionNode)
            ]
            if len(operations) > 1:
                raise GraphQLError(
                    "Must provide operation name if query contains multiple operations."
                )
        yield


# Built once: Strawberry's ValidationCache keys on the rule classes, and classes
# made per request (as MaxAliasesLimiter(...) would) never hit it.
RULES: tuple[type[ValidationRule], ...] = (
    create_aliases_rule(MAX_ALIASES),
    depth_rule(MAX_DEPTH),
)


class DocumentRules(AddValidationRules):
    def __init__(self) -> None:
        super().__init__(list(RULES))


def document_limits() -> list[Callable[[], SchemaExtension]]:
    return [
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        DocumentRules,
        OperationChoice,
    ]
