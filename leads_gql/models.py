"""The lead: its table, its validated input, and the helpers that print it."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

from email_validator import (
    SPECIAL_USE_DOMAIN_NAMES,
    EmailNotValidError,
    validate_email,
)
from sqlalchemy import DateTime, Dialect, Index, String, Text, text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from leads_gql.errors import FieldError, InvalidInput

UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
PHONE_RE = re.compile(r"\+?[0-9 ().\-]+")
# A date and a time (seconds and fraction optional), then an optional offset.
DATETIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?",
    re.ASCII,
)
CONTACT_FIELDS = ("name", "email", "phone")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC instants on every backend.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so it stores naive UTC
    in SQLAlchemy's fixed-width text form, which sorts in time order.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class LeadBase(SQLModel):
    name: str | None = Field(default=None, sa_type=String(255))
    email: str | None = Field(default=None, sa_type=String(254))
    phone: str | None = Field(default=None, sa_type=String(255))
    chatflowid: str = Field(sa_type=String(36))
    chat_id: str = Field(sa_type=String(255))


class Lead(LeadBase, table=True):
    __tablename__ = "lead"
    __table_args__ = (
        # Serves "the leads of a chat flow, oldest first" from the index alone.
        Index("ix_lead_chatflowid_created_date_id", "chatflowid", "created_date", "id"),
        # Erasure finds a contact's leads in every flow: by email in any letter
        # case, by the digits of the phone. (Retention's index by age is the
        # migration's own, per database: see db.OPTIONAL_INDEXES.)
        Index("ix_lead_email_lower", text("lower(email)")),
        Index("ix_lead_phone_digits", "phone_digits"),
    )

    id: str = Field(primary_key=True, sa_type=String(36))
    created_date: datetime = Field(sa_type=UTCDateTime, nullable=False)
    # `phone` without its formatting (`phone_digits(phone)`), written with every
    # insert; never part of a lead's output.
    phone_digits: str | None = Field(default=None, sa_type=String(255))


class DeferredIndex(SQLModel, table=True):
    """An index of `lead` that an import into the empty table dropped, to build
    in one pass once the leads are in (store/deferred.py): its name and its
    definition, as the database gave it."""

    __tablename__ = "deferred_index"

    name: str = Field(primary_key=True, sa_type=String(63))
    definition: str = Field(sa_type=Text)


class LeadRow(Protocol):
    """What a stored lead looks like to the printers: a `Lead` or a Core row."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def chatflowid(self) -> str: ...
    @property
    def chat_id(self) -> str: ...
    @property
    def created_date(self) -> datetime: ...


@dataclasses.dataclass(frozen=True, slots=True)
class StoredLead:
    """A lead as stored: a plain object, no ORM state to build."""

    id: str
    name: str | None
    email: str | None
    phone: str | None
    chatflowid: str
    chat_id: str
    created_date: datetime


def format_datetime(value: datetime) -> str:
    """UTC with a `Z`; six fractional digits only when the fraction is not zero."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def lead_to_dict(lead: LeadRow) -> dict[str, Any]:
    """The seven keys of SPEC, in SPEC's order and spelling."""
    return {
        "id": lead.id,
        "name": lead.name,
        "email": lead.email,
        "phone": lead.phone,
        "chatflowid": lead.chatflowid,
        "chatId": lead.chat_id,
        "createdDate": format_datetime(lead.created_date),
    }


# Field parsers: each takes the raw JSON / GraphQL value and returns the stored form,
# or raises ValueError with the message the client sees.


def parse_uuid(value: object) -> str:
    if not isinstance(value, str) or not UUID_RE.fullmatch(value):
        raise ValueError("must be a UUID (8-4-4-4-12 hexadecimal digits)")
    return value.lower()


def parse_text(value: object, max_length: int) -> str:
    """A string the database can hold: valid Unicode, no NUL, not too long."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not value.isascii():  # (ASCII always encodes)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text") from None
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters")
    return value


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_name(value: object) -> str:
    return parse_text(value.strip() if isinstance(value, str) else value, 255)


def parse_email(value: object) -> str:
    email = parse_text(value.strip() if isinstance(value, str) else value, 254)
    if _plain_email(email):
        return email
    try:
        check_email_syntax(email)
    except EmailNotValidError as exc:
        raise ValueError(f"must be a valid email address: {exc}") from None
    return email


def check_email_syntax(email: str) -> None:
    """The full check; raises EmailNotValidError.

    Syntax (SPEC), not deliverability: dotless domains, `.test` and quoted local
    parts pass; the library still refuses reserved names (`.local`)."""
    validate_email(
        email,
        check_deliverability=False,
        globally_deliverable=False,
        test_environment=True,
        allow_quoted_local=True,
    )


# The everyday address (ASCII dot-atom, letters-only TLD), which the full check
# accepts whole (tests/test_models.py checks it on generated addresses): known
# in a microsecond instead of fifty.
PLAIN_EMAIL_RE = re.compile(
    r"[A-Za-z0-9_+-]{1,64}(?:\.[A-Za-z0-9_+-]{1,64})*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}",
    re.ASCII,
)


_SPECIAL_USE_SUFFIXES = tuple("." + name for name in SPECIAL_USE_DOMAIN_NAMES)


def _plain_email(email: str) -> bool:
    if not PLAIN_EMAIL_RE.fullmatch(email):
        return False
    local, _, domain = email.rpartition("@")
    domain = domain.lower()
    return (
        len(local) <= 64
        and "--" not in domain  # IDNA's rules for `xn--` and `ab--cd` labels
        # The domain is not a special-use name, nor under one.
        and not ("." + domain).endswith(_SPECIAL_USE_SUFFIXES)
    )


def parse_phone(value: object) -> str:
    phone = parse_text(value.strip() if isinstance(value, str) else value, 255)
    if not PHONE_RE.fullmatch(phone):
        raise ValueError(
            "must be digits with optional formatting (a leading +, spaces, -, (, ), .)"
        )
    digits = sum(ch.isdigit() for ch in phone)
    if not 5 <= digits <= 20:
        raise ValueError("must have 5 to 20 digits")
    return phone


def phone_digits(phone: str | None) -> str | None:
    """The digits of a phone number, as stored for erasure to match
    (`+44 20 7946 0958` and `(44) 20-7946-0958` are both `442079460958`)."""
    if phone is None:
        return None
    return _NOT_DIGITS.sub("", phone) or None


_NOT_DIGITS = re.compile(r"[^0-9]+")


def parse_chat_id(value: object) -> str:
    chat_id = parse_text(value, 255)
    if not chat_id:
        raise ValueError("must be 1 to 255 characters")
    return chat_id


def parse_datetime(value: object) -> datetime:
    message = "must be an ISO 8601 date-time, e.g. 2024-08-24T14:15:22Z"
    if not isinstance(value, str):
        raise ValueError(message)
    match = DATETIME_RE.fullmatch(value)
    if not match:
        raise ValueError(message)
    year, month, day, hour, minute, second, fraction, _z, sign, oh, om = match.groups()
    try:
        offset = timedelta(hours=int(oh or 0), minutes=int(om or 0))
        tz = timezone(-offset if sign == "-" else offset)
        parsed = datetime(
            int(year), int(month), int(day), int(hour), int(minute),
            int(second or 0), int((fraction or "0")[:6].ljust(6, "0")), tzinfo=tz,
        )  # fmt: skip
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"{message} (this one is out of range)") from None


# The importer's fast path (`plain_lead`): the everyday phone (5 to 20
# digits with formatting: PHONE_RE and the digit count in one match) and instant
# (our exports' `...Z`, Flowise's `YYYY-MM-DD HH:MM:SS`), which the C parser reads.
PLAIN_PHONE_RE = re.compile(r"\+?[ ().\-]*(?:[0-9][ ().\-]*){5,20}")
PLAIN_INSTANT_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ](?:[01][0-9]|2[0-3]):[0-9]{2}:[0-9]{2}"
    r"(?:\.[0-9]{3}|\.[0-9]{6})?Z?"
)


# An everyday valid lead as the importer's fast path reads it (`plain_lead`):
# (id, name, email, phone, chatflowid, chatId, createdDate) as `LeadCreate.parse`
# gives them, but createdDate is the text as given: one of PLAIN_INSTANT_RE's
# shapes, a real instant, in UTC (`plain_instant` reads it). Formatting a
# datetime again cost more than all the checks of the lead's fields.
PlainLead = tuple[
    str | None, str | None, str | None, str | None, str, str | None, str | None
]


def plain_lead(data: Mapping[str, Any]) -> PlainLead | None:
    """`LeadCreate.parse` of an everyday valid lead, in a third of the time (an
    import parses millions); None for anything else, which `parse` then decides
    and explains. Never accepts what `parse` refuses nor gives another value
    (tests/test_import.py compares them)."""
    get = data.get
    name, email, phone = get("name"), get("email"), get("phone")
    lead_id, chat_id, created = get("id"), get("chatId"), get("createdDate")
    try:
        if name is not None:
            name = parse_name(name) or None
        if email is not None:
            if not isinstance(email, str):
                return None
            email = email.strip() or None
            if email is not None and not (len(email) <= 254 and _plain_email(email)):
                return None
        if phone is not None:
            if not isinstance(phone, str):
                return None
            phone = phone.strip() or None
            if phone is not None and not (
                len(phone) <= 255 and PLAIN_PHONE_RE.fullmatch(phone)
            ):
                return None
        if name is None and email is None and phone is None:
            return None
        chatflowid = parse_uuid(get("chatflowid"))
        if lead_id is not None:
            lead_id = parse_uuid(lead_id)
        if chat_id is not None:
            chat_id = parse_chat_id(chat_id)
        if created is not None:
            if not (isinstance(created, str) and PLAIN_INSTANT_RE.fullmatch(created)):
                return None
            datetime.fromisoformat(created)  # a day that exists, or ValueError
    except ValueError:
        return None
    return lead_id, name, email, phone, chatflowid, chat_id, created


def plain_instant(text: str) -> datetime:
    """A `PlainLead`'s createdDate as an aware datetime (no offset means UTC)."""
    created = datetime.fromisoformat(text)
    return created if created.tzinfo is not None else created.replace(tzinfo=UTC)


# (wire name, attribute, parser) of each input field; `chatflowid` alone is required.
INPUT_FIELDS: tuple[tuple[str, str, Callable[[object], Any]], ...] = (
    ("id", "id", parse_uuid),
    ("name", "name", parse_name),
    ("email", "email", parse_email),
    ("phone", "phone", parse_phone),
    ("chatflowid", "chatflowid", parse_uuid),
    ("chatId", "chat_id", parse_chat_id),
    ("createdDate", "created_date", parse_datetime),
)


@dataclasses.dataclass(kw_only=True, slots=True)
class LeadCreate:
    """A create request after validation: normalised values, `None` where not given."""

    id: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    chatflowid: str
    chat_id: str | None = None
    created_date: datetime | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> LeadCreate:
        """Validate a JSON object or GraphQL input; raise InvalidInput listing fields.

        `null` is absent; blank `name`/`email`/`phone` is `null`; other keys are
        ignored (legacy clients send extras).
        """
        values: dict[str, Any] = {}
        errors: list[FieldError] = []
        for wire, attr, parser in INPUT_FIELDS:
            raw = data.get(wire)
            if raw is None or (wire in CONTACT_FIELDS and _blank(raw)):
                if wire == "chatflowid":
                    errors.append({"field": wire, "message": "is required"})
                continue
            try:
                values[attr] = parser(raw)
            except ValueError as exc:
                errors.append({"field": wire, "message": str(exc)})
        if all(_blank(data.get(wire)) for wire in CONTACT_FIELDS):
            errors.extend(
                {"field": wire, "message": "give at least one of name, email, phone"}
                for wire in CONTACT_FIELDS
            )
        if errors:
            raise InvalidInput(errors, "The lead is invalid")
        return cls(**values)

    def to_lead(self, now: datetime) -> StoredLead:
        """The row to insert: a new id, chat id and time where the request gave none."""
        return StoredLead(
            id=self.id or str(uuid.uuid4()),
            name=self.name,
            email=self.email,
            phone=self.phone,
            chatflowid=self.chatflowid,
            chat_id=self.chat_id or str(uuid.uuid4()),
            created_date=self.created_date or now,
        )

    def as_sent(self, stored: LeadRow) -> StoredLead:
        """The stored lead with no contact data beyond what this request sent.

        Ids and `createdDate` are kept: the first answer gave them, and a retry
        that lost that answer needs them."""
        return StoredLead(
            id=stored.id,
            name=self.name,
            email=self.email,
            phone=self.phone,
            chatflowid=stored.chatflowid,
            chat_id=stored.chat_id,
            created_date=stored.created_date,
        )

    def matches(self, stored: LeadRow) -> bool:
        """A retry: every field this request gives equals the stored value."""
        return all(
            getattr(self, attr) is None or getattr(self, attr) == getattr(stored, attr)
            for _, attr, _ in INPUT_FIELDS
        )
