"""The lead's rules, checked on the parsers that REST and GraphQL share."""

from datetime import UTC, datetime

import pytest
from email_validator import EmailNotValidError
from hypothesis import HealthCheck, given, settings, strategies as st

from leads_gql.errors import InvalidInput
from leads_gql.models import (
    PLAIN_EMAIL_RE,
    Lead,
    LeadCreate,
    _plain_email,
    check_email_syntax,
    format_datetime,
    lead_to_dict,
    parse_datetime,
    parse_email,
    parse_phone,
    parse_uuid,
)

FLOW = "3FA85F64-5717-4562-B3FC-2C963F66AFA6"


def errors_of(data: dict[str, object]) -> list[dict[str, str]]:
    with pytest.raises(InvalidInput) as info:
        LeadCreate.parse(data)
    return list(info.value.errors)


@pytest.mark.parametrize(
    ("raw", "printed"),
    [
        ("2024-08-24T14:15:22Z", "2024-08-24T14:15:22Z"),
        ("2024-08-24 14:15:22", "2024-08-24T14:15:22Z"),
        ("2024-08-24t14:15:22z", "2024-08-24T14:15:22Z"),
        ("2024-08-24T16:15:22+02:00", "2024-08-24T14:15:22Z"),
        ("2024-08-24T14:15:22-0130", "2024-08-24T15:45:22Z"),
        ("2024-08-24T14:15:22.5Z", "2024-08-24T14:15:22.500000Z"),
        ("2024-08-24T14:15:22.1234567Z", "2024-08-24T14:15:22.123456Z"),
        ("2024-08-24T14:15:22.000000Z", "2024-08-24T14:15:22Z"),
        ("2024-08-24T14:15Z", "2024-08-24T14:15:00Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ],
)
def test_datetimes_print_in_utc_with_z(raw: str, printed: str) -> None:
    assert format_datetime(parse_datetime(raw)) == printed


@pytest.mark.parametrize(
    "raw",
    [
        "2024-08-24",
        "2024-08-24T",
        "24-08-2024 14:15",
        "2024-02-30T00:00:00Z",
        "2024-08-24T24:00:00Z",
        "2024-08-24T23:59:60Z",
        "0001-01-01T00:00:00+01:00",
        "2024-08-24T14:15:22+25:00",
        " 2024-08-24T14:15:22Z",
        "\u0662\u0660\u0662\u0664-08-24T14:15:22Z",
        1724508922,
        None,
    ],
)
def test_invalid_datetimes_are_refused(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_datetime(raw)


def test_uuid_any_case_in_lower_case_out() -> None:
    assert parse_uuid(FLOW) == FLOW.lower()
    for bad in ["", FLOW + "0", FLOW.replace("-", ""), "{" + FLOW + "}", 42]:
        with pytest.raises(ValueError):
            parse_uuid(bad)


@pytest.mark.parametrize(
    "phone", ["+1 (555) 123-4567", "12345", "030.123.456", "1" * 20]
)
def test_phones_with_usual_formatting(phone: str) -> None:
    assert parse_phone(f"  {phone} ") == phone


@pytest.mark.parametrize("phone", ["1234", "1" * 21, "555-CALL-NOW", "12+345678", "+"])
def test_bad_phones(phone: str) -> None:
    with pytest.raises(ValueError):
        parse_phone(phone)


def test_parse_normalises_and_ignores_extras() -> None:
    lead = LeadCreate.parse(
        {
            "chatflowid": FLOW,
            "name": "  Ada Lovelace ",
            "email": "   ",
            "phone": None,
            "chatId": " as given ",
            "unknown": {"nested": True},
        }
    )
    assert (lead.chatflowid, lead.name, lead.email, lead.phone, lead.chat_id) == (
        FLOW.lower(),
        "Ada Lovelace",
        None,
        None,
        " as given ",
    )


def test_every_failing_field_is_listed() -> None:
    assert errors_of({"chatflowid": "nope", "email": "not-an-email", "chatId": ""}) == [
        {
            "field": "email",
            "message": errors_of({"chatflowid": FLOW, "email": "x"})[0]["message"],
        },
        {
            "field": "chatflowid",
            "message": "must be a UUID (8-4-4-4-12 hexadecimal digits)",
        },
        {"field": "chatId", "message": "must be 1 to 255 characters"},
    ]


def test_no_contact_field_names_each_of_them() -> None:
    fields = [e["field"] for e in errors_of({"chatflowid": FLOW, "name": " "})]
    assert fields == ["name", "email", "phone"]


def test_missing_chatflowid_is_required() -> None:
    assert errors_of({"name": "Ada"}) == [
        {"field": "chatflowid", "message": "is required"}
    ]


@pytest.mark.parametrize(
    "data",
    [
        {"name": "x" * 256},
        {"email": "a" * 245 + "@example.com"},
        {"name": "nul\x00byte"},
        {"name": "lone \ud800 surrogate"},
        {"name": 42},
        {"email": ["a@example.com"]},
        {"name": "Ada", "id": "not-a-uuid"},
        {"name": "Ada", "chatId": "x" * 256},
        {"name": "Ada", "chatId": 7},
    ],
)
def test_rule_breakers_are_refused(data: dict[str, object]) -> None:
    assert errors_of({"chatflowid": FLOW, **data})


def test_retry_compares_only_given_fields() -> None:
    created = datetime(2024, 8, 24, 14, 15, 22, tzinfo=UTC)
    stored = Lead(
        id="3fa85f64-5717-4562-b3fc-2c963f66afa6",
        name="Ada",
        email="ada@example.com",
        phone=None,
        chatflowid=FLOW.lower(),
        chat_id="chat",
        created_date=created,
    )
    same = {"id": stored.id.upper(), "chatflowid": FLOW, "name": " Ada "}
    assert LeadCreate.parse(same).matches(stored)
    assert LeadCreate.parse(
        {**same, "createdDate": "2024-08-24T16:15:22+02:00"}
    ).matches(stored)
    assert not LeadCreate.parse({**same, "name": "Grace"}).matches(stored)
    assert not LeadCreate.parse({**same, "phone": "12345"}).matches(stored)
    assert lead_to_dict(stored) == {
        "id": stored.id,
        "name": "Ada",
        "email": "ada@example.com",
        "phone": None,
        "chatflowid": FLOW.lower(),
        "chatId": "chat",
        "createdDate": "2024-08-24T14:15:22Z",
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_regex(PLAIN_EMAIL_RE, fullmatch=True).filter(lambda e: len(e) <= 254))
def test_every_address_the_fast_path_takes_passes_the_full_check(email: str) -> None:
    if _plain_email(email):
        check_email_syntax(email)  # raises if the fast path was too generous


@pytest.mark.parametrize(
    ("email", "fast", "valid"),
    [
        ("ada@example.com", True, True),
        ("Ada.Lovelace+leads@Mail.Example.CO.UK", True, True),
        ("a_b-c@x-y.example", True, True),
        ("ada@intranet", False, True),  # dotless: the full check decides
        ("ada@localhost", False, False),
        ("ada@host.test", False, True),  # special-use names: the full check
        ("ada@host.local", False, False),
        ("ada@host.onion", False, False),
        ("ada@xn--80ak6aa92e.com", False, True),
        ("ada@ab--cd.com", False, False),
        ("ada@192.168.0.1", False, True),
        ('"ada lovelace"@example.com', False, True),
        ("ada..l@example.com", False, False),
        (".ada@example.com", False, False),
        ("adä@example.com", False, True),
        ("a" * 65 + "@example.com", False, True),
        ("ada@-example.com", False, False),
    ],
)
def test_the_fast_path_and_the_full_check_agree(
    email: str, fast: bool, valid: bool
) -> None:
    assert _plain_email(email) is fast
    try:
        check_email_syntax(email)
        full = True
    except EmailNotValidError:
        full = False
    assert full is valid
    if valid:
        assert parse_email(email) == email
    else:
        with pytest.raises(ValueError, match="valid email address"):
            parse_email(email)
