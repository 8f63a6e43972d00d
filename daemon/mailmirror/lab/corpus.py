"""Reproducible sample mail for the demo, the tests and the benchmarks.

Everything here is deterministic: the same ``seed`` gives the same bytes, flags and dates on every run
and every machine (no clock, no global random state, MIME boundaries derived from the seed).

* :func:`sample_mailbox` -- a small, realistic account with the awkward cases a mirror must survive
  (nested, spaced and non-ASCII folder names, an empty folder, a big attachment, bare LF line endings,
  a raw 8-bit header, a message without Message-ID and two messages sharing one).
* :func:`corpus` -- bigger corpora for the benchmarks with a configurable size mix; messages are only
  built when read (the folders are lazy sequences).
* :func:`generated_message` -- one message of about a given size.
* :func:`describe` -- a one-paragraph summary for the demo's output.

Folder names are Unicode, "/"-separated, as the source account sees them; use
:func:`mailmirror.lab.dovecot.seed_mailbox` to store them on a server with another separator or prefix.
"""

from __future__ import annotations

import base64
import hashlib
import quopri
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.header import Header
from email.utils import format_datetime, formataddr
from typing import overload

from mailmirror.lab.dovecot import SeedMessage

__all__ = [
    "DEFAULT_SIZE_MIX",
    "SAMPLE_FOLDERS",
    "LazyFolder",
    "SeedMessage",
    "SizeBand",
    "corpus",
    "describe",
    "fingerprint",
    "generated_message",
    "sample_mailbox",
]

#: Folders of :func:`sample_mailbox`, in order.
SAMPLE_FOLDERS: tuple[str, ...] = (
    "INBOX",
    "Sent",
    "Archive/2024",
    "Archive/2024/Q1",
    "Projects/Client Work",
    "Reçus/Été",
    "Отчёты",
    "Empty Folder",
)

# Share of the ordinary messages per folder (Empty Folder gets none).
_SAMPLE_WEIGHTS: Mapping[str, float] = {
    "INBOX": 0.40,
    "Sent": 0.15,
    "Archive/2024": 0.12,
    "Archive/2024/Q1": 0.10,
    "Projects/Client Work": 0.10,
    "Reçus/Été": 0.07,
    "Отчёты": 0.06,
}

_KIB = 1024
_MIB = 1024 * 1024


@dataclass(frozen=True)
class SizeBand:
    """``share`` of the messages have a size uniformly drawn from ``[low, high]`` bytes."""

    share: float
    low: int
    high: int


#: ~70% 2-20 KiB, ~25% 50-500 KiB, ~5% 1-5 MiB.
DEFAULT_SIZE_MIX: tuple[SizeBand, ...] = (
    SizeBand(0.70, 2 * _KIB, 20 * _KIB),
    SizeBand(0.25, 50 * _KIB, 500 * _KIB),
    SizeBand(0.05, 1 * _MIB, 5 * _MIB),
)

# --------------------------------------------------------------------------------------------- people

_OWNER = ("Alex Morgan", "alex.morgan@example.com")
_PEOPLE: tuple[tuple[str, str], ...] = (
    ("Priya Raman", "priya.raman@example.org"),
    ("Jonas Becker", "jonas.becker@example.de"),
    ("Zoë Martin", "zoe.martin@example.fr"),
    ("François Dupont", "francois.dupont@exemple.fr"),
    ("Дмитрий Иванов", "d.ivanov@example.ru"),
    ("Kenji Watanabe", "kenji@example.jp"),
    ("Maria García", "maria.garcia@example.es"),
    ("Ops Alerts", "alerts@monitoring.example.net"),
    ("Billing", "billing@vendor.example.com"),
    ("Sam O'Neil", "sam.oneil@example.co.uk"),
    ("Léa Moreau", "lea.moreau@example.fr"),
    ("Ольга Смирнова", "olga.smirnova@example.ru"),
)
_TIMEZONES = tuple(timezone(timedelta(hours=h)) for h in (0, 1, 2, -5, -8, 3, 9, 5.5))


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_TOPICS_EN = (
    "Quarterly report draft",
    "Meeting notes {n}",
    "Invoice #{n}",
    "Deployment window for release 3.{n}",
    "Lunch on Thursday?",
    "Budget review",
    "Contract renewal",
    "Your order {n} has shipped",
    "Weekly status",
    "Question about the API rate limits",
    "Travel plans for the offsite",
    "[alert] disk usage above 90% on db-{n}",
    "Slides for Monday",
    "Re: onboarding checklist",
)
_TOPICS_FR = ("Facture n°{n}", "Réunion de l'été", "Congés d'août", "Compte rendu du {n} juillet", "À relire")
_TOPICS_RU = ("Отчёт за квартал {n}", "Счёт №{n}", "Совещание в пятницу", "План работ", "Итоги месяца")

_WORDS_EN = _words(
    "the project schedule is on track and we expect to ship the next milestone as planned "
    "please review the attached figures before the meeting and let me know if anything looks off "
    "we have moved the deadline by a week because the vendor needs more time for the integration "
    "thanks for the quick turnaround on the contract the legal team signed off this morning "
    "the servers were patched overnight and no customer impact was observed during the window "
    "can you confirm the numbers for the second quarter and the forecast for next year "
    "I added a few comments inline and fixed the typos in the summary section "
    "let us sync tomorrow at ten to go through the open questions and agree on next steps"
)
_WORDS_FR = _words(
    "merci pour votre retour rapide nous avons bien reçu la facture et le paiement sera effectué "
    "la réunion est décalée à jeudi prochain à quinze heures dans la salle habituelle "
    "vous trouverez ci joint le compte rendu ainsi que les éléments demandés pour le dossier "
    "bonne journée et à très bientôt pour la suite du projet cet été"
)
_WORDS_RU = _words(
    "добрый день направляю вам отчёт за прошедший период прошу ознакомиться и сообщить замечания "
    "совещание переносится на пятницу в десять утра просьба подтвердить участие "
    "счёт оплачен документы будут отправлены курьером на следующей неделе спасибо за работу"
)

# ---------------------------------------------------------------------------------------- building


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _paragraph(rng: random.Random, words: Sequence[str]) -> str:
    chosen = rng.choices(words, k=rng.randint(25, 70))
    chosen[0] = chosen[0].capitalize()
    chosen[-1] += "."
    lines: list[str] = []
    line: list[str] = []
    width = 0
    for word in chosen:  # greedy wrap at 72 columns (textwrap is needlessly slow here)
        if line and width + 1 + len(word) > 72:
            lines.append(" ".join(line))
            line, width = [], 0
        width += len(word) + (1 if line else 0)
        line.append(word)
    lines.append(" ".join(line))
    return "\n".join(lines)


def _paragraphs(rng: random.Random, words: Sequence[str], size: int) -> str:
    """Wrapped prose of about ``size`` bytes of UTF-8.

    Long texts reuse a pool of a dozen paragraphs, which keeps big corpora cheap to generate.
    """
    out: list[str] = []
    pool: list[str] = []
    total = 0
    while total < size:
        if len(pool) < 12:
            para = _paragraph(rng, words)
            pool.append(para)
        else:
            para = rng.choice(pool)
        out.append(para)
        total += len(para.encode()) + 2
    text = "\n\n".join(out).encode()[: max(size, 1)].decode("utf-8", "ignore")
    return text.rstrip() + "\n"


def _encode_header(value: str) -> str:
    """RFC 2047 encoded-word when needed (deterministic: email.header does not use randomness)."""
    try:
        value.encode("ascii")
    except UnicodeEncodeError:
        return Header(value, "utf-8", maxlinelen=76).encode()
    return value


def _addr(person: tuple[str, str]) -> str:
    return formataddr(person, charset="utf-8")


def _message_id(rng: random.Random, domain: str) -> str:
    return f"<{rng.getrandbits(64):016x}.{rng.getrandbits(32):08x}@{domain}>"


def _boundary(rng: random.Random) -> str:
    return f"=_mm_{rng.getrandbits(96):024x}"


def _base64_lines(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")  # 76-character lines, "\n" (made CRLF later)


@dataclass
class _Draft:
    """What a message is about, before rendering to bytes."""

    sender: tuple[str, str]
    recipients: list[tuple[str, str]]
    subject: str
    date: datetime
    message_id: str | None
    in_reply_to: str | None = None
    language: str = "en"


def _headers(d: _Draft, extra: Sequence[str] = ()) -> list[str]:
    lines = [
        f"Date: {format_datetime(d.date)}",
        f"From: {_addr(d.sender)}",
        f"To: {', '.join(_addr(r) for r in d.recipients)}",
        f"Subject: {_encode_header(d.subject)}",
    ]
    if d.message_id is not None:
        lines.append(f"Message-ID: {d.message_id}")
    if d.in_reply_to:
        lines.append(f"In-Reply-To: {d.in_reply_to}")
        lines.append(f"References: {d.in_reply_to}")
    lines.extend(extra)
    lines.append("MIME-Version: 1.0")
    return lines


def _words_for(language: str) -> Sequence[str]:
    return {"fr": _WORDS_FR, "ru": _WORDS_RU}.get(language, _WORDS_EN)


def _signature(sender: tuple[str, str]) -> str:
    return f"\n-- \n{sender[0]}\n"


def _text_part(rng: random.Random, d: _Draft, size: int) -> tuple[list[str], str]:
    """Content headers and body of a text/plain part of about ``size`` bytes."""
    body = _paragraphs(rng, _words_for(d.language), size) + _signature(d.sender)
    ascii_only = body.isascii()
    if ascii_only:
        return ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"], body
    if rng.random() < 0.5:
        if d.language == "ru":  # mostly non-ASCII: what mail clients send is base64, not QP
            b64 = _base64_lines(body.encode("utf-8"))
            return ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64"], b64
        qp = quopri.encodestring(body.encode("utf-8")).decode("ascii")
        return ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable"], qp
    return ["Content-Type: text/plain; charset=utf-8; format=flowed", "Content-Transfer-Encoding: 8bit"], body


def _attachment(rng: random.Random, payload_size: int, n: int) -> tuple[list[str], str]:
    kind = rng.choice(("pdf", "png", "csv", "zip") if payload_size <= 100 * _KIB else ("pdf", "png", "zip"))
    if kind == "csv":
        rows = ["date,account,amount,currency"]
        total = len(rows[0]) + 1
        while total < payload_size:
            rows.append(f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},ACC{rng.randint(1000, 9999)},"
                        f"{rng.randint(1, 99999)}.{rng.randint(0, 99):02d},EUR")  # fmt: skip
            total += len(rows[-1]) + 1
        data = ("\n".join(rows) + "\n").encode()[: max(payload_size, 1)]
        mime, name = "text/csv", f"export-{n}.csv"
    else:
        magic = {"pdf": b"%PDF-1.4\n", "png": b"\x89PNG\r\n\x1a\n", "zip": b"PK\x03\x04"}[kind]
        data = magic + rng.randbytes(max(payload_size - len(magic), 0))
        mime = {"pdf": "application/pdf", "png": "image/png", "zip": "application/zip"}[kind]
        name = {"pdf": f"invoice-{n}.pdf", "png": f"screenshot-{n}.png", "zip": f"archive-{n}.zip"}[kind]
    headers = [
        f'Content-Type: {mime}; name="{name}"',
        f'Content-Disposition: attachment; filename="{name}"',
        "Content-Transfer-Encoding: base64",
    ]
    return headers, _base64_lines(data)


def _render(
    rng: random.Random,
    d: _Draft,
    *,
    text_size: int,
    attachment_size: int = 0,
    html: bool = False,
    extra_headers: Sequence[str] = (),
    n: int = 0,
) -> str:
    """Render a draft to a message (``\\n`` line endings; callers convert)."""
    head = _headers(d, extra_headers)
    text_headers, text_body = _text_part(rng, d, text_size)
    if not attachment_size and not html:
        return "\n".join(head + text_headers) + "\n\n" + text_body
    parts: list[tuple[list[str], str]] = []
    if html:
        alt_boundary = _boundary(rng)
        escaped = text_body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        html_body = "<html><body>\n" + "".join(f"<p>{p}</p>\n" for p in escaped.split("\n\n")) + "</body></html>\n"
        html_headers, html_payload = ["Content-Type: text/html; charset=utf-8",
                                      "Content-Transfer-Encoding: quoted-printable"], quopri.encodestring(
            html_body.encode("utf-8")).decode("ascii")  # fmt: skip
        alt = (
            "\n".join(f"--{alt_boundary}\n" + "\n".join(h) + "\n\n" + b for h, b in
                      ((text_headers, text_body), (html_headers, html_payload)))
            + f"\n--{alt_boundary}--\n"
        )  # fmt: skip
        parts.append(([f'Content-Type: multipart/alternative; boundary="{alt_boundary}"'], alt))
    else:
        parts.append((text_headers, text_body))
    if attachment_size:
        parts.append(_attachment(rng, attachment_size, n))
    if len(parts) == 1:
        h, b = parts[0]
        return "\n".join(head + h) + "\n\n" + b
    boundary = _boundary(rng)
    body = "This is a multi-part message in MIME format.\n\n"
    body += "".join(f"--{boundary}\n" + "\n".join(h) + "\n\n" + b + "\n" for h, b in parts)
    body += f"--{boundary}--\n"
    return "\n".join([*head, f'Content-Type: multipart/mixed; boundary="{boundary}"']) + "\n\n" + body


def _flags(rng: random.Random, folder: str) -> tuple[str, ...]:
    if folder == "Sent":
        return ("\\Seen",)
    seen = rng.random() < (0.7 if folder == "INBOX" else 0.92)
    flags: list[str] = []
    if seen:
        flags.append("\\Seen")
        if rng.random() < 0.15:
            flags.append("\\Answered")
        if rng.random() < 0.05:
            flags.append("$Forwarded")
    if rng.random() < 0.08:
        flags.append("\\Flagged")
    return tuple(flags)


def _draft(rng: random.Random, folder: str, date: datetime, n: int, known_ids: list[str]) -> _Draft:
    language = "fr" if folder.startswith("Reçus") else "ru" if folder == "Отчёты" else "en"
    topics = {"fr": _TOPICS_FR, "ru": _TOPICS_RU}.get(language, _TOPICS_EN)
    subject = rng.choice(topics).format(n=rng.randint(2, 9999))
    other = rng.choice(_PEOPLE)
    cc = [p for p in rng.sample(_PEOPLE, 2) if p != other][: rng.randint(0, 1)]
    if folder == "Sent":
        sender, recipients = _OWNER, [other, *cc]
    else:
        sender, recipients = other, [_OWNER, *cc]
    reply_to = None
    if known_ids and rng.random() < 0.25:
        reply_to = rng.choice(known_ids)
        subject = "Re: " + subject
    domain = sender[1].split("@", 1)[1]
    return _Draft(sender, recipients, subject, date, _message_id(rng, domain), reply_to, language)


def _extra_headers(rng: random.Random, d: _Draft, folder: str) -> list[str]:
    if folder == "Sent":
        return ["User-Agent: Mozilla Thunderbird"]
    received = d.date - timedelta(seconds=rng.randint(1, 90))
    return [
        f"Received: from mx{rng.randint(1, 4)}.{d.sender[1].split('@', 1)[1]} "
        f"(mx.example.com [192.0.2.{rng.randint(1, 254)}])\n\tby mail.example.com with ESMTPS; "
        f"{format_datetime(received)}",
        f"X-Mailer: mailmirror-corpus {rng.randint(1, 3)}.{rng.randint(0, 9)}",
    ]


def _date_between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    span = int((end - start).total_seconds())
    return (start + timedelta(seconds=rng.randint(0, span))).astimezone(rng.choice(_TIMEZONES))


def _internaldate(rng: random.Random, sent: datetime) -> datetime:
    """Delivery a little after the Date header, whole seconds (Maildir keeps seconds), tz-aware."""
    return (sent + timedelta(seconds=rng.randint(2, 600))).replace(microsecond=0)


# ------------------------------------------------------------------------------------- sample mailbox

_SAMPLE_PERIOD: Mapping[str, tuple[datetime, datetime]] = {
    "Archive/2024": (datetime(2024, 4, 1, tzinfo=UTC), datetime(2024, 12, 31, tzinfo=UTC)),
    "Archive/2024/Q1": (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 31, 23, tzinfo=UTC)),
    "Reçus/Été": (datetime(2023, 6, 21, tzinfo=UTC), datetime(2023, 9, 22, tzinfo=UTC)),
}
_SAMPLE_DEFAULT_PERIOD = (datetime(2021, 1, 1, tzinfo=UTC), datetime(2025, 6, 30, tzinfo=UTC))


def sample_mailbox(
    seed: int = 1, *, messages: int = 240, big_message_bytes: int = 5 * _MIB
) -> dict[str, list[SeedMessage]]:
    """A realistic, reproducible account: ``{folder: [SeedMessage, ...]}`` with ``messages`` messages.

    Folders: see :data:`SAMPLE_FOLDERS` ("Empty Folder" has no messages).  Besides ordinary mail
    (plain, multipart/alternative, attachments; \\Seen on most, some unseen, \\Flagged, \\Answered,
    $Forwarded) it always contains these special messages, each identifiable by an ``X-Corpus-Case``
    header:

    ``big``          one message of about ``big_message_bytes`` (base64 attachment; in Archive/2024;
                     omitted when ``big_message_bytes`` is 0)
    ``bare-lf``      line endings are bare LF, no CR (INBOX)
    ``8bit-header``  raw UTF-8 in the Subject, not an encoded-word (Reçus/Été)
    ``no-message-id`` no Message-ID header (INBOX)
    ``duplicate-id-1`` / ``duplicate-id-2``  two different messages with the same Message-ID (INBOX)

    Every message is at most ~120 KB except the big one.  Within a folder messages are in
    INTERNALDATE order.
    """
    specials = 6 if big_message_bytes else 5
    if messages < specials:
        raise ValueError(f"sample_mailbox needs at least {specials} messages, got {messages}")
    rng = random.Random(f"mailmirror-sample/{seed}")
    ordinary = messages - specials
    counts = _split(ordinary, [_SAMPLE_WEIGHTS[f] for f in _SAMPLE_WEIGHTS])
    mailbox: dict[str, list[SeedMessage]] = {f: [] for f in SAMPLE_FOLDERS}
    known_ids: list[str] = []
    n = 0
    for folder, count in zip(_SAMPLE_WEIGHTS, counts, strict=True):
        start, end = _SAMPLE_PERIOD.get(folder, _SAMPLE_DEFAULT_PERIOD)
        for _ in range(count):
            n += 1
            d = _draft(rng, folder, _date_between(rng, start, end), n, known_ids)
            shape = rng.random()
            text_size = int(min(200 * 1.08 ** rng.randint(0, 60), 40_000))
            attachment = rng.randint(3_000, 60_000) if shape < 0.15 else 0
            html = 0.15 <= shape < 0.4
            if html:
                text_size = min(text_size, 12_000)  # the HTML alternative repeats the text
            raw = _render(rng, d, text_size=text_size, attachment_size=attachment, html=html,
                          extra_headers=_extra_headers(rng, d, folder), n=n)  # fmt: skip
            mailbox[folder].append(SeedMessage(_crlf(raw), _flags(rng, folder), _internaldate(rng, d.date)))
            if d.message_id:
                known_ids.append(d.message_id)
    for folder, message in _special_messages(rng, big_message_bytes):
        mailbox[folder].append(message)
    for folder, items in mailbox.items():
        mailbox[folder] = sorted(items, key=lambda m: m.internaldate or datetime.min.replace(tzinfo=UTC))
    return mailbox


def _special_messages(rng: random.Random, big_message_bytes: int) -> list[tuple[str, SeedMessage]]:
    out: list[tuple[str, SeedMessage]] = []
    start, end = _SAMPLE_DEFAULT_PERIOD

    def when(a: datetime = start, b: datetime = end) -> tuple[datetime, datetime]:
        sent = _date_between(rng, a, b)
        return sent, _internaldate(rng, sent)

    if big_message_bytes:
        sent, received = when(*_SAMPLE_PERIOD["Archive/2024"])
        d = _Draft(_PEOPLE[1], [_OWNER], "Scans of the signed contract (large)", sent,
                   _message_id(rng, "example.de"))  # fmt: skip
        out.append(("Archive/2024", SeedMessage(
            _sized_message(rng, d, big_message_bytes, ["X-Corpus-Case: big"]), ("\\Seen",), received)))  # fmt: skip

    sent, received = when()
    d = _Draft(_PEOPLE[7], [_OWNER], "Nightly backup report (bare LF line endings)", sent,
               _message_id(rng, "monitoring.example.net"))  # fmt: skip
    raw = _render(rng, d, text_size=1500, extra_headers=["X-Corpus-Case: bare-lf"])
    out.append(("INBOX", SeedMessage(raw.encode("utf-8"), ("\\Seen",), received)))  # "\n" only, no CR

    sent, received = when(*_SAMPLE_PERIOD["Reçus/Été"])
    mid = _message_id(rng, "exemple.fr")
    head = [
        f"Date: {format_datetime(sent)}",
        f"From: {_addr(_PEOPLE[3])}",
        f"To: {_addr(_OWNER)}",
        "Subject: Été 2023 — réunion à Besançon, déjà confirmée ✓",  # raw UTF-8, deliberately not RFC 2047
        f"Message-ID: {mid}",
        "X-Corpus-Case: 8bit-header",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    body = _paragraphs(rng, _WORDS_FR, 900) + _signature(_PEOPLE[3])
    out.append(("Reçus/Été", SeedMessage(_crlf("\n".join(head) + "\n\n" + body), (), received)))

    sent, received = when()
    d = _Draft(_PEOPLE[8], [_OWNER], "Your receipt (this message has no Message-ID)", sent, None)
    raw = _render(rng, d, text_size=700, extra_headers=["X-Corpus-Case: no-message-id"])
    out.append(("INBOX", SeedMessage(_crlf(raw), ("\\Seen",), received)))

    shared = _message_id(rng, "example.es")
    for i, subject in enumerate(("Agenda for the planning day", "Agenda for the planning day (corrected)"), 1):
        sent, received = when()
        d = _Draft(_PEOPLE[6], [_OWNER], subject, sent, shared)
        raw = _render(rng, d, text_size=800 + 300 * i, extra_headers=[f"X-Corpus-Case: duplicate-id-{i}"])
        flags = ("\\Seen", "\\Flagged") if i == 1 else ()
        out.append(("INBOX", SeedMessage(_crlf(raw), flags, received)))
    return out


def _split(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder)."""
    s = sum(weights)
    exact = [total * w / s for w in weights]
    parts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - parts[i], reverse=True)
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


# ---------------------------------------------------------------------------------- sized messages


def _sized_message(rng: random.Random, d: _Draft, size: int, extra_headers: Sequence[str] = ()) -> bytes:
    """A CRLF message of about ``size`` bytes: text up to 24 KiB, a base64 attachment beyond."""
    if size <= 24 * _KIB:
        probe = _crlf(_render(random.Random(0), d, text_size=10, extra_headers=extra_headers))
        text_size = max(size - len(probe), 10)
        return _crlf(_render(rng, d, text_size=text_size, extra_headers=extra_headers))
    text_size = rng.randint(300, 2000)
    # Overhead is everything but the attachment payload; base64 with CRLF costs 78 bytes per 57.
    state = rng.getstate()
    probe = _crlf(_render(rng, d, text_size=text_size, attachment_size=57, extra_headers=extra_headers))
    rng.setstate(state)
    overhead = len(probe) - 78
    payload = max((size - overhead) * 57 // 78, 57)
    return _crlf(_render(rng, d, text_size=text_size, attachment_size=payload, extra_headers=extra_headers))


def generated_message(rng: random.Random, i: int, size: int, *, folder: str = "INBOX") -> SeedMessage:
    """Message number ``i`` of about ``size`` bytes (within ~1%, CRLF), with flags and INTERNALDATE.

    Deterministic for a given state of ``rng``.
    """
    start, end = _SAMPLE_DEFAULT_PERIOD
    d = _draft(rng, folder, _date_between(rng, start, end), i, [])
    raw = _sized_message(rng, d, size, _extra_headers(rng, d, folder))
    return SeedMessage(raw, _flags(rng, folder), _internaldate(rng, d.date))


class LazyFolder(Sequence[SeedMessage]):
    """The messages of one folder of a :func:`corpus`, built on access (nothing is kept in memory).

    ``sizes`` are the target sizes, known up front, so totals are cheap (:attr:`approx_bytes`).
    """

    def __init__(self, seed: int, folder: str, sizes: Sequence[int]) -> None:
        self.seed = seed
        self.folder = folder
        self.sizes: tuple[int, ...] = tuple(sizes)

    @property
    def approx_bytes(self) -> int:
        return sum(self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    @overload
    def __getitem__(self, index: int) -> SeedMessage: ...
    @overload
    def __getitem__(self, index: slice) -> list[SeedMessage]: ...
    def __getitem__(self, index: int | slice) -> SeedMessage | list[SeedMessage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = random.Random(f"mailmirror-corpus/{self.seed}/{self.folder}/{index}")
        return generated_message(rng, index, self.sizes[index], folder=self.folder)

    def __iter__(self) -> Iterator[SeedMessage]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"<LazyFolder {self.folder!r}: {len(self)} messages, ~{self.approx_bytes / _MIB:.1f} MiB>"


def corpus(
    seed: int,
    count: int,
    folders: Sequence[str] = ("INBOX", "Sent", "Archive", "Archive/2023", "Projects/Client Work"),
    size_mix: Sequence[SizeBand] = DEFAULT_SIZE_MIX,
) -> dict[str, LazyFolder]:
    """``count`` messages spread over ``folders`` (the first gets the most), sizes drawn from
    ``size_mix``.  Messages are generated when read, so a corpus of gigabytes costs nothing until
    seeded; the same ``seed`` always gives the same bytes.
    """
    if not folders:
        raise ValueError("corpus() needs at least one folder")
    if abs(sum(b.share for b in size_mix) - 1.0) > 0.01:
        raise ValueError("size_mix shares must add up to 1")
    rng = random.Random(f"mailmirror-corpus/{seed}")
    counts = _split(count, [1.0 / (k + 1) for k in range(len(folders))])
    result: dict[str, LazyFolder] = {}
    bands = list(size_mix)
    for folder, n in zip(folders, counts, strict=True):
        sizes = []
        for _ in range(n):
            band = rng.choices(bands, weights=[b.share for b in bands])[0]
            sizes.append(rng.randint(band.low, band.high))
        result[folder] = LazyFolder(seed, folder, sizes)
    return result


# ------------------------------------------------------------------------------------------ summary


def describe(mailbox: Mapping[str, Sequence[SeedMessage]]) -> str:
    """A short summary for humans, e.g.::

    8 folders, 240 messages, 6.3 MB
      INBOX                      94 messages    0.7 MB
      ...
    """
    rows: list[tuple[str, int, int]] = []
    for folder, messages in mailbox.items():
        approx = getattr(messages, "approx_bytes", None)
        size = approx if isinstance(approx, int) else sum(len(m.raw) for m in messages)
        rows.append((folder, len(messages), size))
    total_msgs = sum(r[1] for r in rows)
    total_bytes = sum(r[2] for r in rows)
    width = max((len(r[0]) for r in rows), default=6)
    lines = [f"{len(rows)} folders, {total_msgs} messages, {total_bytes / 1e6:.1f} MB"]
    for folder, n, size in rows:
        lines.append(f"  {folder:<{width}}  {n:>6} messages  {size / 1e6:>8.1f} MB")
    return "\n".join(lines)


def fingerprint(mailbox: Mapping[str, Sequence[SeedMessage]]) -> str:
    """SHA-256 over every folder name, raw message, flag set and INTERNALDATE (to check determinism)."""
    h = hashlib.sha256()
    for folder, messages in mailbox.items():
        h.update(folder.encode() + b"\0")
        for m in messages:
            h.update(hashlib.sha256(m.raw).digest())
            h.update(" ".join(m.flags).encode() + b"\0")
            h.update((m.internaldate.isoformat() if m.internaldate else "-").encode() + b"\0")
    return h.hexdigest()
