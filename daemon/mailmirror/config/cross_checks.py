"""Checks of the config that no single section can make: pairs naming unknown accounts, a pair copying a
mailbox into itself, two rows of pair sets writing into one destination mailbox.

They collect every problem (as pydantic error details at the offending key) so that the loader reports them
together with all other errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic_core import InitErrorDetails

from mailmirror.config.mailboxes import MailboxIdentity
from mailmirror.config.pairsets import PairSetOrigins
from mailmirror.config.section import custom_error

if TYPE_CHECKING:
    from mailmirror.config.config_file import Config


def known_names(names: Iterable[str]) -> str:
    """The names for "(known: ...)" in an error message."""
    return ", ".join(sorted(names)) or "none defined"


def account_reference_errors(data: Any) -> list[InitErrorDetails]:
    """Pairs naming an unknown account, or the same account twice; read from the raw data so that they are
    reported together with every other error."""
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), dict):
        return []
    accounts = data.get("accounts")
    known = {str(name) for name in accounts} if isinstance(accounts, dict) else set()
    errors: list[InitErrorDetails] = []
    for pair_name, pair in data["pairs"].items():
        if isinstance(pair, dict):
            errors += _pair_reference_errors(pair_name, pair, known)
    return errors


def _pair_reference_errors(pair_name: Any, pair: dict[str, Any], known: set[str]) -> list[InitErrorDetails]:
    errors: list[InitErrorDetails] = []
    for role in ("source", "destination"):
        account = _as_name(pair.get(role))
        if account and account not in known:
            message = f"unknown account {account!r} (known: {known_names(known)})"
            errors.append(custom_error(("pairs", pair_name, role), message, account))
    source, destination = _as_name(pair.get("source")), _as_name(pair.get("destination"))
    if source and source == destination:
        message = f"same account as source ({source!r}): a pair copies from one account to another"
        errors.append(custom_error(("pairs", pair_name, "destination"), message, destination))
    return errors


def same_mailbox_errors(config: Config) -> list[InitErrorDetails]:
    """Pairs whose source and destination are one mailbox under two account names: each pass would copy
    the mailbox into itself (with folders.under, nesting one more level every time)."""
    errors: list[InitErrorDetails] = []
    for name, pair in config.pairs.items():
        source, destination = config.accounts[pair.source], config.accounts[pair.destination]
        if source.identity == destination.identity:
            message = (
                f"pair '{name}': source account '{pair.source}' and destination account '{pair.destination}' are "
                f"the same mailbox ({source.identity}): the pair would copy the mailbox into itself. Point the "
                "destination at another mailbox (or remove the pair)"
            )
            errors.append(custom_error(("pairs", name, "destination"), message, pair.destination))
    return errors


def shared_destination_errors(config: Config, origins: PairSetOrigins) -> list[InitErrorDetails]:
    """Two rows of pair sets writing into one destination mailbox (at the same place: rows that set
    different folders.under may consolidate two old accounts into one)."""
    first: dict[tuple[MailboxIdentity, str | None], str] = {}
    errors: list[InitErrorDetails] = []
    effective = config.effective_pairs()
    for name in origins.rows:
        pair = effective.get(name)
        if pair is None:
            continue
        under = pair.folders.under
        # one folder tree however written: "Old/" is "Old" (a trailing '/' is dropped by the mapping), and
        # folder names are compared without case, like user names: a server may not tell them apart
        key = (
            config.accounts[pair.destination].identity,
            None if under is None else (under.rstrip("/") or under).casefold(),
        )
        if key in first:
            other = first[key]
            message = (
                f"the same destination mailbox ({key[0]}) as pair '{other}' (line {origins.rows[other].line}): two "
                "pairs would write into one mailbox; fix the row, or give each row its own folders.under"
            )
            errors.append(custom_error(("pairs", name, "destination"), message, None))
        else:
            first[key] = name
    return errors


def same_mailbox_accounts(config: Config) -> list[tuple[str, str, MailboxIdentity]]:
    """Pairs of account names (in file order) that are one mailbox: worth a warning, not an error."""
    first: dict[MailboxIdentity, str] = {}
    found: list[tuple[str, str, MailboxIdentity]] = []
    for name, account in config.accounts.items():
        identity = account.identity
        if identity in first:
            found.append((first[identity], name, identity))
        else:
            first[identity] = name
    return found


def _as_name(value: Any) -> str | None:
    """A name as the models will read it (numbers become strings), or None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None
