"""Lab accounts shaped like Gmail and like Exchange / Microsoft 365, for the provider presets' tests.

A lab Dovecot gives special-use attributes through ``mailbox`` blocks of its namespace, for every user
alike; the names of these layouts ("Sent Items", "[Gmail]/All Mail") must not turn up with attributes
in the other tests' accounts, so they get a server of their own::

    server = DovecotServer(root, "providers", special_use=PROVIDER_SPECIAL_USE)

:func:`gmail_mailbox` and :func:`exchange_mailbox` return what :func:`mailmirror.lab.dovecot.seed_mailbox` seeds:
logical folder name → messages, the same bytes in several folders where Gmail shows one message under
several labels. Each layout also says which messages a copy must contain once and which folders the
presets leave out (see :mod:`mailmirror.config.providers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from mailmirror.lab.dovecot import SPECIAL_USE_MAILBOXES, SeedMessage

__all__ = [
    "EXCHANGE_SPECIAL_USE",
    "GMAIL_SPECIAL_USE",
    "PROVIDER_SPECIAL_USE",
    "Layout",
    "exchange_mailbox",
    "gmail_mailbox",
]

#: Gmail's IMAP folders with their attributes (as imapsync's FAQ.Gmail lists them, plus \Important).
GMAIL_SPECIAL_USE: Mapping[str, str] = {
    "[Gmail]/All Mail": "\\All",
    "[Gmail]/Drafts": "\\Drafts",
    "[Gmail]/Important": "\\Important",
    "[Gmail]/Sent Mail": "\\Sent",
    "[Gmail]/Spam": "\\Junk",
    "[Gmail]/Starred": "\\Flagged",
    "[Gmail]/Trash": "\\Trash",
}

#: Exchange / Microsoft 365 folders that carry an attribute over IMAP.
EXCHANGE_SPECIAL_USE: Mapping[str, str] = {
    "Sent Items": "\\Sent",
    "Deleted Items": "\\Trash",
    "Junk Email": "\\Junk",
    "Drafts": "\\Drafts",
    "Archive": "\\Archive",
}

#: For the provider lab server: the usual lab folders and both layouts (their names do not overlap).
PROVIDER_SPECIAL_USE: Mapping[str, str] = {**SPECIAL_USE_MAILBOXES, **GMAIL_SPECIAL_USE, **EXCHANGE_SPECIAL_USE}


@dataclass(frozen=True)
class Layout:
    """A provider-shaped mailbox: what to seed, and what a copy of it must hold."""

    mailbox: dict[str, list[SeedMessage]]
    #: Message-ID → the source folder whose copy a pass keeps (each message once)
    kept_in: dict[str, str]
    #: folders a preset leaves out (their messages are elsewhere, or not mail)
    excluded: tuple[str, ...]


def _message(key: str, subject: str, *, sender: str = "bob@example.org", day: int = 1) -> bytes:
    return (
        f"From: {sender}\r\n"
        "To: alice@example.org\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, {day:02d} Jan 2024 10:00:00 +0000\r\n"
        f"Message-ID: <{key}@lab.example>\r\n"
        "\r\n"
        f"{subject}: body of {key}.\r\n"
    ).encode()


_DATE = datetime(2024, 1, 2, 12, 0, tzinfo=UTC)


def gmail_mailbox() -> Layout:
    """A Gmail account: INBOX and user labels (with a nested one), the ``[Gmail]/`` system folders, one
    message under three labels, an archived message only in All Mail, a starred and an important one,
    spam and trash (which Gmail keeps out of All Mail), and a chat."""
    messages = {
        "inbox-work": _message("inbox-work", "In the inbox, labelled Work", day=1),
        "work-project": _message("work-project", "Labelled Work and Projects/Alpha, starred", day=2),
        "archived": _message("archived", "Archived, no label", day=3),
        "sent": _message("sent", "Sent by Alice", sender="alice@example.org", day=4),
        "draft": _message("draft", "A draft", sender="alice@example.org", day=5),
        "spam": _message("spam", "Spam", sender="spammer@example.com", day=6),
        "trash": _message("trash", "In the trash", day=7),
        "important": _message("important", "Marked important, in the inbox", day=8),
        "chat": _message("chat", "Chat with Bob", day=9),
    }

    def seeds(*keys: str, flags: tuple[str, ...] = ()) -> list[SeedMessage]:
        return [SeedMessage(messages[key], flags, _DATE) for key in keys]

    all_mail = ("inbox-work", "work-project", "archived", "sent", "draft", "important")
    mailbox = {
        "INBOX": seeds("inbox-work", "important", flags=("\\Seen",)),
        "Work": seeds("inbox-work", "work-project"),
        "Projects/Alpha": seeds("work-project", flags=("\\Flagged",)),
        "[Gmail]/All Mail": seeds(*all_mail),
        "[Gmail]/Sent Mail": seeds("sent", flags=("\\Seen",)),
        "[Gmail]/Drafts": seeds("draft", flags=("\\Draft",)),
        "[Gmail]/Spam": seeds("spam"),
        "[Gmail]/Trash": seeds("trash", flags=("\\Seen",)),
        "[Gmail]/Starred": seeds("work-project", flags=("\\Flagged",)),
        "[Gmail]/Important": seeds("important", "work-project"),
        "[Gmail]/Chats": seeds("chat"),
    }
    kept_in = {
        "inbox-work": "INBOX",
        "important": "INBOX",
        "work-project": "Projects/Alpha",  # labels go alphabetically: "Projects/Alpha" before "Work"
        "archived": "[Gmail]/All Mail",  # only All Mail has it, and All Mail comes last
        "sent": "[Gmail]/Sent Mail",
        "draft": "[Gmail]/Drafts",
        "spam": "[Gmail]/Spam",
        "trash": "[Gmail]/Trash",
    }
    return Layout(mailbox, kept_in, excluded=("[Gmail]/Chats", "[Gmail]/Important", "[Gmail]/Starred"))


def exchange_mailbox() -> Layout:
    """An Exchange / Microsoft 365 account: its special folders by their Outlook names, Archive,
    Conversation History, Outbox with an unsent message, and Sync Issues with its three subfolders."""
    folders = {
        "INBOX": "inbox",
        "Sent Items": "sent",
        "Deleted Items": "deleted",
        "Junk Email": "junk",
        "Drafts": "draft",
        "Archive": "archived",
        "Conversation History": "conversation",
        "Outbox": "outbox",
        "Sync Issues": "sync-issue",
        "Sync Issues/Conflicts": "conflict",
        "Sync Issues/Local Failures": "local-failure",
        "Sync Issues/Server Failures": "server-failure",
    }
    mailbox = {
        folder: [SeedMessage(_message(key, f"Exchange {folder}", day=index + 1), (), _DATE)]
        for index, (folder, key) in enumerate(folders.items())
    }
    excluded = (
        "Outbox",
        "Sync Issues",
        "Sync Issues/Conflicts",
        "Sync Issues/Local Failures",
        "Sync Issues/Server Failures",
    )
    kept_in = {key: folder for folder, key in folders.items() if folder not in excluded}
    return Layout(mailbox, kept_in, excluded)
