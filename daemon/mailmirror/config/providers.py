"""Provider presets: an account's ``provider:`` (gmail, office365, generic) as ordinary config defaults.

A preset only fills in settings the config file leaves out: what the file says, in the account, in
``defaults`` or in the pair, always wins (a list such as ``folders.exclude`` is replaced whole, a mapping
such as ``folders.map`` merges entry by entry, as with ``defaults``). Nothing here changes how a pass
works: the values are the same settings anyone could write by hand, and ``mailmirror plan`` lists each
one that a preset set or that the file overrode.

Three layers, each value with where it comes from (docs/providers.md has the table and the links):

* account settings (``host``, ``max_connections``, rate limits), applied to the raw account before
  validation; a few depend on whether a pair writes to the account (Gmail's and Exchange's limits for
  uploads are stricter than for downloads);
* pair settings when the account is a pair's source (folders not to copy, duplicates of labels);
* pair settings when the account is a pair's destination (message size limit, reserved names).

Where both accounts of a pair have a preset that sets the same pair setting (the throttling retries),
the larger value wins: the more patient one suits both servers.

``provider: gmail`` and ``provider: office365`` name the same services as an account's ``oauth2``
provider (google, microsoft); the presets here only set IMAP limits and folder rules, never credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mailmirror.config.units import parse_duration

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "PRESETS",
    "PROVIDERS",
    "AppliedPreset",
    "Preset",
    "PresetValue",
    "ProviderName",
    "apply_account_presets",
    "pair_preset_layer",
    "presets_json",
    "print_presets",
]

ProviderName = Literal["gmail", "office365", "generic"]
PROVIDERS: tuple[str, ...] = ("gmail", "office365", "generic")

Role = Literal["account", "source", "destination"]
Path = tuple[str, ...]


@dataclass(frozen=True)
class PresetValue:
    """One setting of a preset: its path below the account or the pair, the value as a config file would
    write it, and where the value comes from (a short reference; docs/providers.md links it)."""

    path: Path
    value: Any
    source: str


@dataclass(frozen=True)
class Preset:
    """What ``provider: <name>`` sets. ``account_written`` replaces ``account`` values of the same path
    when at least one pair writes to the account."""

    name: str
    account: tuple[PresetValue, ...] = ()
    account_written: tuple[PresetValue, ...] = ()
    as_source: tuple[PresetValue, ...] = ()
    as_destination: tuple[PresetValue, ...] = ()


@dataclass(frozen=True)
class AppliedPreset:
    """A preset value as it ended up: used, or ``overridden`` by the config file (the file's value is used)."""

    setting: str  # dotted path in the config: accounts.gmail.max_connections, pairs.alice.messages.max_size
    value: Any
    provider: str
    role: Role
    source: str
    overridden: bool


_GOOGLE_CONNECTIONS = "Gmail Help 'Too many simultaneous connections': 15 IMAP connections per account; 10 is ours"
_GMAIL_THROTTLE = "ours: Gmail answers over-use with 'BYE Session expired' or a slowed rate (imapsync FAQ.Gmail)"
_EXCHANGE_THROTTLE = (
    "imapsync FAQ.Office365: 'Request is throttled. Suggested Backoff Time: 178755..299961 milliseconds'; "
    "30s doubling reaches 5 minutes, 8 retries are ours"
)

GMAIL = Preset(
    name="gmail",
    account=(
        PresetValue(("host",), "imap.gmail.com", "Gmail Help 'IMAP server settings'; imapsync --gmail1/--gmail2"),
        PresetValue(("max_connections",), 10, _GOOGLE_CONNECTIONS),
        PresetValue(
            ("max_bytes_per_second",),
            "40kB",
            "imapsync --gmail1 (--maxbytespersecond 40_000); Google Workspace: download with IMAP 2500 MB/day",
        ),
    ),
    account_written=(
        PresetValue(
            ("max_bytes_per_second",),
            "20kB",
            "imapsync --gmail2 (--maxbytespersecond 20_000); Google Workspace: upload with IMAP 500 MB/day",
        ),
    ),
    as_source=(
        PresetValue(
            ("messages", "skip_cross_folder_duplicates"),
            True,
            "imapsync --gmail1 (--skipcrossduplicates, All Mail last): a label is a folder, one message many labels",
        ),
        PresetValue(
            ("folders", "exclude"),
            [
                "[Gmail]/Chats",
                "[Gmail]/Important",
                "[Gmail]/Starred",
                "[Google Mail]/Chats",
                "[Google Mail]/Important",
                "[Google Mail]/Starred",
            ],
            "imapsync FAQ.Gmail: chats do not transfer over IMAP; Important and Starred are views of All Mail "
            "(Starred = \\Flagged), ours",
        ),
        PresetValue(("transfer", "backoff"), "10s", _GMAIL_THROTTLE),
        PresetValue(("transfer", "retries"), 8, _GMAIL_THROTTLE),
    ),
    as_destination=(
        PresetValue(
            ("messages", "max_size"),
            "34MiB",
            "imapsync FAQ.Gmail, --gmail2 example (--maxsize 35_651_584)",
        ),
        PresetValue(("transfer", "backoff"), "10s", _GMAIL_THROTTLE),
        PresetValue(("transfer", "retries"), 8, _GMAIL_THROTTLE),
    ),
)

OFFICE365 = Preset(
    name="office365",
    account=(
        PresetValue(
            ("host",),
            "outlook.office365.com",
            "Microsoft 'POP, IMAP, and SMTP settings for Outlook.com'; imapsync --office1/--office2",
        ),
        PresetValue(
            ("max_connections",),
            8,
            "Exchange Online throttling FAQ: 20 concurrent IMAP connections; Exchange Server "
            "MaxConnectionsPerUser default 16; 8 is ours",
        ),
    ),
    account_written=(
        PresetValue(
            ("max_messages_per_second",),
            4,
            "imapsync --office2 and --exchange2 (--maxmessagespersecond 4)",
        ),
    ),
    as_source=(
        PresetValue(
            ("folders", "exclude"),
            ["Files", "Outbox", "Sync Issues", "Sync Issues/**"],
            "imapsync --office1 (--exclude ^Files$: attachments without headers); Outbox (unsent mail a client "
            "could send again) and Sync Issues (Outlook's sync reports) are ours",
        ),
        PresetValue(("transfer", "backoff"), "30s", _EXCHANGE_THROTTLE),
        PresetValue(("transfer", "retries"), 8, _EXCHANGE_THROTTLE),
    ),
    as_destination=(
        PresetValue(
            ("messages", "max_size"),
            "45MB",
            "imapsync --office2 (--maxsize 45_000_000), FAQ.Office365 '45 MB by default'; Exchange Online "
            "limits: 25 to 150 MB per mailbox",
        ),
        PresetValue(
            ("folders", "map", "Files"),
            "Files (copied)",
            "imapsync --office2 (--f1f2 Files=Files_renamed_by_imapsync): 'NO Folder name is reserved'",
        ),
        PresetValue(("transfer", "backoff"), "30s", _EXCHANGE_THROTTLE),
        PresetValue(("transfer", "retries"), 8, _EXCHANGE_THROTTLE),
    ),
)

GENERIC = Preset(name="generic")

PRESETS: Mapping[str, Preset] = {preset.name: preset for preset in (GMAIL, OFFICE365, GENERIC)}


# --------------------------------------------------------------------------------------------------
# Account settings (raw data, before validation)
# --------------------------------------------------------------------------------------------------


def apply_account_presets(data: Any) -> tuple[Any, list[AppliedPreset]]:
    """The raw config ``data`` with each account's preset values filled in where the account leaves them
    out, and what was applied or overridden. Malformed data is returned as it is: validation reports it."""
    if not isinstance(data, dict) or not isinstance(data.get("accounts"), dict):
        return data, []
    written = _accounts_written_to(data.get("pairs"))
    accounts: dict[Any, Any] = {}
    applied: list[AppliedPreset] = []
    for name, account in data["accounts"].items():
        provider = account.get("provider") if isinstance(account, dict) else None
        preset = PRESETS.get(provider) if isinstance(provider, str) else None
        if preset is None or not isinstance(account, dict):
            accounts[name] = account
            continue
        values = _account_values(preset, str(name) in written)
        accounts[name] = {**{value.path[0]: value.value for value in values}, **account}
        applied += [_applied(f"accounts.{name}", value, preset.name, "account", account) for value in values]
    return {**data, "accounts": accounts}, applied


def _accounts_written_to(pairs: Any) -> set[str]:
    if not isinstance(pairs, dict):
        return set()
    return {str(pair.get("destination")) for pair in pairs.values() if isinstance(pair, dict)}


def _account_values(preset: Preset, written: bool) -> list[PresetValue]:
    replaced = {value.path for value in preset.account_written} if written else set()
    values = [value for value in preset.account if value.path not in replaced]
    return values + list(preset.account_written if written else ())


# --------------------------------------------------------------------------------------------------
# Pair settings (merged under defaults and the pair)
# --------------------------------------------------------------------------------------------------


def pair_preset_layer(
    pair_name: str,
    source_provider: str | None,
    destination_provider: str | None,
    explicit: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Any], list[AppliedPreset]]:
    """The pair settings the two accounts' presets give (a nested dict to merge under ``defaults`` and the
    pair), and each value as applied or overridden by one of the ``explicit`` layers (what ``defaults`` and
    the pair set, as dumped with ``exclude_unset``)."""
    chosen: dict[Path, tuple[PresetValue, str, Role]] = {}
    roles: tuple[tuple[str | None, Role], ...] = ((source_provider, "source"), (destination_provider, "destination"))
    for provider, role in roles:
        preset = PRESETS.get(provider or "")
        if preset is None:
            continue
        for value in preset.as_source if role == "source" else preset.as_destination:
            earlier = chosen.get(value.path)
            if earlier is None or _magnitude(value.value) > _magnitude(earlier[0].value):
                chosen[value.path] = (value, preset.name, role)
    layer: dict[str, Any] = {}
    applied: list[AppliedPreset] = []
    for value, provider, role in chosen.values():
        _set_path(layer, value.path, value.value)
        overridden = any(_has_path(layer_set, value.path) for layer_set in explicit)
        applied.append(
            AppliedPreset(
                f"pairs.{pair_name}.{'.'.join(value.path)}", value.value, provider, role, value.source, overridden
            )
        )
    return layer, applied


def _magnitude(value: Any) -> float:
    """For choosing the larger of two presets' values: numbers as they are, durations in seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0
    if isinstance(value, str):
        try:
            return parse_duration(value).total_seconds()
        except ValueError:
            return 0.0
    return float(value)


def _set_path(target: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def _has_path(data: Mapping[str, Any], path: Path) -> bool:
    current: Any = data
    for key in path:
        if not isinstance(current, Mapping) or key not in current:
            return False
        current = current[key]
    return True


def _applied(prefix: str, value: PresetValue, provider: str, role: Role, written: Mapping[str, Any]) -> AppliedPreset:
    setting = f"{prefix}.{'.'.join(value.path)}"
    return AppliedPreset(setting, value.value, provider, role, value.source, _has_path(written, value.path))


# --------------------------------------------------------------------------------------------------
# Showing them (mailmirror plan)
# --------------------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


def print_presets(console: Console, pair: str, applied: Iterable[AppliedPreset]) -> None:
    """The settings that the accounts' presets chose for ``pair`` (and those the config overrode)."""
    from rich.markup import escape  # rich only for the commands that print tables
    from rich.table import Table

    rows = list(applied)
    if not rows:
        return
    table = Table(title=f"Provider presets of pair '{pair}'", title_justify="left")
    table.add_column("Setting", no_wrap=True)
    table.add_column("Preset value", overflow="fold")
    table.add_column("From", no_wrap=True)
    for row in rows:
        value = escape(_shown(row.value))
        shown = f"[dim]{value} (overridden by the config)[/dim]" if row.overridden else value
        table.add_row(row.setting, shown, f"{row.provider} ({row.role})")
    table.caption = "The config wins over a preset. Where each value comes from: docs/providers.md, plan --json."
    table.caption_justify = "left"
    console.print(table)


def presets_json(applied: Iterable[AppliedPreset]) -> list[dict[str, Any]]:
    return [
        {
            "setting": row.setting,
            "value": row.value,
            "provider": row.provider,
            "role": row.role,
            "source": row.source,
            "overridden": row.overridden,
        }
        for row in applied
    ]
