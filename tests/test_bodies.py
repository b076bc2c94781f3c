"""Request bodies on POST /leads (both prefixes) and POST /graphql: the 64 KiB
limit, media types, and JSON that is not valid here (400, never 500, nothing run).

Each body carries a create (a lead, or a createLead mutation) for a fresh chat
flow, so "nothing stored" is checked by reading that flow back.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import new_id
from tests.test_rest import LEAKS, outcome

pytestmark = pytest.mark.anyio

LIMIT = 64 * 1024
JSON = {"Content-Type": "application/json"}


@dataclasses.dataclass
class Target:
    path: str
    graphql: bool

    def document(self, flow: str) -> dict[str, Any]:
        """A JSON object that creates a lead in `flow`."""
        if self.graphql:
            return {
                "query": "mutation { createLead(input: "
                f'{{chatflowid: "{flow}", name: "Ada"}}) {{ id chatflowid }} }}'
            }
        return {"chatflowid": flow, "name": "Ada"}

    def body(self, flow: str, slot: str | bytes) -> bytes:
        """The create document with `"x": <slot>` spliced in as raw JSON text."""
        slot = slot.encode() if isinstance(slot, str) else slot
        head = json.dumps(self.document(flow))[:-1].encode()
        return head + b', "x": ' + slot + b"}"

    def sized(self, flow: str, size: int) -> bytes:
        """A valid create document of exactly `size` bytes."""
        body = self.body(flow, '""')
        pad = size - len(body)
        assert pad >= 0
        return self.body(flow, '"' + "x" * pad + '"')

    def verdict(self, response: httpx.Response) -> tuple[int, Any]:
        """(status, detail): REST bodies must have the REST error shape; GraphQL
        errors must be JSON with `errors`; no body may show internals."""
        if response.headers.get("x-content-type-options") != "nosniff":
            return response.status_code, "no nosniff"
        if not self.graphql or response.status_code == 200:
            if response.status_code == 200:
                return 200, "ok" if self.created(response) else response.text
            return outcome(response)
        if any(leak in response.text for leak in LEAKS):
            return response.status_code, f"leaks: {response.text}"
        errors = response.json().get("errors")
        if not (isinstance(errors, list) and errors):
            return response.status_code, f"malformed: {response.text}"
        return response.status_code, None

    def created(self, response: httpx.Response) -> bool:
        body = response.json()
        if self.graphql:
            body = (body.get("data") or {}).get("createLead") or {}
        return isinstance(body, dict) and isinstance(body.get("id"), str)


TARGETS = [
    Target("/leads", graphql=False),
    Target("/api/v1/leads/", graphql=False),
    Target("/graphql", graphql=True),
]


@pytest.fixture(params=TARGETS, ids=["rest", "rest-v1-slash", "graphql"])
def target(request: pytest.FixtureRequest) -> Target:
    return request.param  # type: ignore[no-any-return]


async def stored(client: httpx.AsyncClient, auth: dict[str, str], flow: str) -> int:
    """How many leads `flow` has, read over REST."""
    response = await client.get(f"/leads/{flow}", headers=auth)
    if response.status_code == 404:
        return 0
    assert response.status_code == 200, response.text
    return len(response.json())


async def _chunks(body: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_the_size_limit_is_64_kib(
    client: httpx.AsyncClient, auth: dict[str, str], target: Target
) -> None:
    got = {}
    for label, size in [("at the limit", LIMIT), ("one byte over", LIMIT + 1)]:
        for streamed in (False, True):
            flow = new_id()
            body = target.sized(flow, size)
            assert len(body) == size
            response = await client.post(
                target.path,
                content=_chunks(body) if streamed else body,
                headers={**auth, **JSON},
            )
            has_length = "content-length" in response.request.headers
            assert has_length is not streamed
            case = f"{label}, {'chunked' if streamed else 'Content-Length'}"
            got[case] = (target.verdict(response), await stored(client, auth, flow))
    assert got == {
        "at the limit, Content-Length": ((200, "ok"), 1),
        "at the limit, chunked": ((200, "ok"), 1),
        "one byte over, Content-Length": ((413, None), 0),
        "one byte over, chunked": ((413, None), 0),
    }


async def test_a_huge_stream_is_cut_off_at_the_limit(
    client: httpx.AsyncClient, auth: dict[str, str], target: Target
) -> None:
    flow = new_id()
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        head = target.body(flow, '"')[:-1]
        yield head
        for _ in range(2048):  # 8 MiB at most, should the server read it all
            sent += 4096
            yield b"x" * 4096
        yield b'"}'

    response = await client.post(
        target.path, content=endless(), headers={**auth, **JSON}
    )
    assert target.verdict(response) == (413, None)
    assert await stored(client, auth, flow) == 0


async def test_a_body_is_json_only_when_it_says_so(
    client: httpx.AsyncClient, auth: dict[str, str], target: Target
) -> None:
    got, expected = {}, {}
    for content_type in [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/jsonx",
        None,
    ]:
        flow = new_id()
        headers = {**auth} | ({"Content-Type": content_type} if content_type else {})
        response = await client.post(
            target.path, content=target.sized(flow, 200), headers=headers
        )
        got[content_type] = (target.verdict(response), await stored(client, auth, flow))
        expected[content_type] = ((415, None), 0)

    # What httpx sends for form data and file uploads.
    for label, kwargs in {
        "form": lambda flow: {"data": target.document(flow)},
        "multipart": lambda flow: {
            "files": {"f": ("a.json", json.dumps(target.document(flow)).encode())}
        },
    }.items():
        flow = new_id()
        response = await client.post(target.path, headers=auth, **kwargs(flow))
        got[label] = (target.verdict(response), await stored(client, auth, flow))
        expected[label] = ((415, None), 0)
    assert got == expected


async def test_json_media_types_with_parameters_are_accepted(
    client: httpx.AsyncClient, auth: dict[str, str], target: Target
) -> None:
    media_types = [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
    ]
    got = {}
    for content_type in media_types:
        flow = new_id()
        response = await client.post(
            target.path,
            content=target.sized(flow, 200),
            headers={**auth, "Content-Type": content_type},
        )
        got[content_type] = (target.verdict(response), await stored(client, auth, flow))
    assert got == dict.fromkeys(media_types, ((200, "ok"), 1))


NOT_JSON = [
    b"",
    b" ",
    b"{",
    b"{not json}",
    b"{'chatflowid': 'x'}",
    b'{"a": 1,}',
    b'{"a" 1}',
    b'{"a": 1} trailing',
    b"{}{}",
    b"nul",
    b"\x00",
]
NOT_AN_OBJECT = [b'"a string"', b"42", b"3.5", b"null", b"true", b"false"]


async def test_a_body_that_is_not_a_json_object_is_400(
    client: httpx.AsyncClient, auth: dict[str, str], target: Target
) -> None:
    bodies = NOT_JSON + NOT_AN_OBJECT
    if not target.graphql:  # on /graphql an array is a batch
        bodies += [b"[]", b"[1, 2]", b"[{}]"]
    got = {}
    for body in bodies:
        response = await client.post(
            target.path, content=body, headers={**auth, **JSON}
        )
        got[body] = target.verdict(response)
    assert got == dict.fromkeys(bodies, (400, None))


async def test_an_array_holding_the_lead_is_400_on_rest(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    response = await client.post(
        "/api/v1/leads/", json=[{"chatflowid": flow, "name": "Ada"}], headers=auth
    )
    assert outcome(response) == (400, None)
    assert await stored(client, auth, flow) == 0


# Each: the raw JSON text (or bytes) put in the create document as the value of "x".
HOSTILE: dict[str, str | bytes] = {
    "duplicate key": '1, "x": 2',
    "duplicate nested key": '{"a": 1, "a": 1}',
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "1e999": "1e999",
    "-1e999": "-1e999",
    "invalid UTF-8 byte": b'"\xff"',
    "overlong UTF-8": b'"\xc0\xaf"',
    "UTF-8 encoded surrogate": b'"\xed\xa0\x80"',
    "truncated UTF-8": b'"\xe2\x82"',
    "beyond U+10FFFF": b'"\xf4\x90\x80\x80"',
    "Latin-1 text": b'"caf\xe9"',
    "escaped lone high surrogate": '"\\ud800"',
    "escaped lone low surrogate": '"\\udfff"',
    "escaped surrogates reversed": '"\\ude00\\ud83d"',
    "lone surrogate in a key": '{"\\uDBFF": 1}',
    "deep arrays": "[" * 30000 + "]" * 30000,
    "deep objects": '{"a":' * 10000 + "1" + "}" * 10000,
}


async def test_hostile_json_is_400_never_500_and_runs_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], target: Target
) -> None:
    bodies: dict[str, bytes] = {}
    flows: dict[str, str] = {}
    for label, slot in HOSTILE.items():
        flows[label] = new_id()
        bodies[label] = target.body(flows[label], slot)
    # A second value for a key the request uses; the server must not pick one.
    flows["duplicate used key"] = flow = new_id()
    bodies["duplicate used key"] = (
        json.dumps(target.document(flow))[:-1]
        + ", "
        + json.dumps(target.document(flow))[1:]
    ).encode()
    flows["UTF-8 BOM"] = flow = new_id()
    bodies["UTF-8 BOM"] = b"\xef\xbb\xbf" + target.body(flow, "1")
    flows["UTF-16"] = flow = new_id()
    bodies["UTF-16"] = target.body(flow, "1").decode().encode("utf-16")
    flows["50,000 ["] = new_id()
    bodies["50,000 ["] = b"[" * 50000
    flows["open nesting in a create"] = flow = new_id()
    bodies["open nesting in a create"] = target.body(flow, "[" * 50000)[:-1]

    got = {}
    for label, body in bodies.items():
        assert len(body) <= LIMIT, label
        response = await client.post(
            target.path, content=body, headers={**auth, **JSON}
        )
        got[label] = (
            target.verdict(response),
            await stored(client, auth, flows[label]),
        )
    assert got == dict.fromkeys(bodies, ((400, None), 0))


async def test_ordinary_json_in_an_ignored_key_is_fine(
    client: httpx.AsyncClient, auth: dict[str, str], target: Target
) -> None:
    """The controls for the hostile cases: the same slot with valid values."""
    slots = {
        "moderate nesting": "[" * 50 + "]" * 50,
        "large finite float": "1e308",
        "negative zero": "-0.0",
        "escaped astral character": '"\\ud83d\\ude00"',
        "UTF-8 text": '"café ✓ 😀"',
        "distinct keys": '{"a": 1, "A": 2, "b": {"a": 3}}',
    }
    got = {}
    for label, slot in slots.items():
        flow = new_id()
        response = await client.post(
            target.path, content=target.body(flow, slot), headers={**auth, **JSON}
        )
        got[label] = (target.verdict(response), await stored(client, auth, flow))
    assert got == dict.fromkeys(slots, ((200, "ok"), 1))


async def test_a_lone_surrogate_where_a_message_would_echo_it_is_400(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """The review's reproductions: text that a message echoes (an operation
    name, an unknown input field) once broke the JSON answer with a 500."""
    flow = new_id()
    bodies = [
        b'{"query":"{ __typename }","operationName":"\\ud800"}',
        b'{"query":"mutation($i: LeadInput!) { createLead(input: $i) { id } }",'
        b'"variables":{"i":{"chatflowid":"' + flow.encode() + b'","name":"A",'
        b'"\\udfff":1}}}',
    ]
    for body in bodies:
        response = await client.post("/graphql", content=body, headers={**auth, **JSON})
        assert response.status_code == 400, response.text
        assert response.json()["statusCode"] == 400
    rest = await client.post(
        "/leads",
        content=b'{"chatflowid":"' + flow.encode() + b'","name":"\\udc00A"}',
        headers={**auth, **JSON},
    )
    assert outcome(rest) == (400, None)
    assert await stored(client, auth, flow) == 0


async def test_no_token_is_401_on_graphql_whatever_the_body(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    target = TARGETS[2]
    flow = new_id()
    text = {"Content-Type": "text/plain"}
    bodies: dict[str, Any] = {
        "valid": lambda: {"content": target.sized(flow, 200), "headers": JSON},
        "huge": lambda: {"content": target.sized(flow, 2 * LIMIT), "headers": JSON},
        "huge, chunked": lambda: {
            "content": _chunks(target.sized(flow, 2 * LIMIT)),
            "headers": JSON,
        },
        "not JSON": lambda: {"content": b"{", "headers": JSON},
        "NaN": lambda: {"content": target.body(flow, "NaN"), "headers": JSON},
        "text/plain": lambda: {"content": target.sized(flow, 200), "headers": text},
    }
    authorizations = [None, "Bearer not.a.jwt", "Basic YWRhOmFkYQ=="]
    got = {}
    for label, make in bodies.items():
        for authorization in authorizations:
            kwargs = make()
            if authorization:
                kwargs["headers"] = {
                    **kwargs["headers"],
                    "Authorization": authorization,
                }
            response = await client.post("/graphql", **kwargs)
            challenge = response.headers.get("www-authenticate", "").lower()
            got[f"{label}, {authorization}"] = (
                target.verdict(response),
                challenge.startswith("bearer"),
            )
    assert got == {
        f"{label}, {authorization}": ((401, None), True)
        for label in bodies
        for authorization in authorizations
    }
    assert await stored(client, auth, flow) == 0
