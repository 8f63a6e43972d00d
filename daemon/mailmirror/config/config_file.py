"""The config file as a whole: :class:`Config` (service settings, accounts, pairs, pair sets), read by
:func:`load_config`.

Public API
    :func:`load_config` reads and validates a file and returns a :class:`Config`; every problem found is
    reported at once in an :class:`~mailmirror.config.problems.InvalidConfig` (a
    :class:`~mailmirror.errors.ConfigError`, exit 78), one line each, as
    ``config.yaml:12: pairs.alice.source: unknown account 'old2' (known: new, old)``.
    :func:`~mailmirror.config.problems.format_config_error` renders any ``ConfigError`` for the terminal.
    :func:`config_json_schema` is the JSON Schema (draft 2020-12) for editors.
    :meth:`Config.pair` / :meth:`Config.effective_pairs` give pairs with ``defaults`` merged in
    (:mod:`mailmirror.config.pair` says how).

The models are the single source of truth: their field descriptions are the schema's and the docs'.
Validating a Config expands pair sets into ordinary accounts and pairs first, then checks each section, then
what no single section can (:mod:`mailmirror.config.cross_checks`), then each pair with defaults and provider
presets merged in.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import InitErrorDetails

from mailmirror.config.account import Account
from mailmirror.config.cross_checks import (
    account_reference_errors,
    known_names,
    same_mailbox_accounts,
    same_mailbox_errors,
    shared_destination_errors,
)
from mailmirror.config.pair import Pair, PairDefaults, PairSet, SectionCache, inherit_defaults, share_default_sections
from mailmirror.config.pair_set_lists import ROW_OPTION_COLUMNS
from mailmirror.config.pairsets import PAIR_SET_ORIGINS, PairSetOrigins, TemplateIssue, expand_pair_sets
from mailmirror.config.problems import InvalidConfig, file_and_line, list_problem
from mailmirror.config.providers import AppliedPreset, apply_account_presets, pair_preset_layer
from mailmirror.config.secrets import Secret
from mailmirror.config.section import Section, copy_errors, custom_error, validation_error
from mailmirror.config.service_settings import DaemonConfig, LogConfig, MetricsConfig, StateConfig
from mailmirror.config.units import CONFIG_DIR
from mailmirror.config.validation_messages import problems_from, top_level_problem
from mailmirror.config.values import Name
from mailmirror.config.yaml_source import read_yaml_document
from mailmirror.errors import UsageError

log = logging.getLogger(__name__)

_PAIR_SET_COLUMNS_NOTE = ", ".join(ROW_OPTION_COLUMNS)


class Config(Section):
    """mailmirror configuration: accounts, the pairs that mirror one account to another, and the service."""

    state: StateConfig = Field(default_factory=StateConfig, description="The state database.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics and health.")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")
    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description="`mailmirror run`: concurrency, backoff.")
    defaults: PairDefaults = Field(
        default_factory=PairDefaults,
        description="Inherited by every pair, key by key; a pair overrides what it sets.",
    )
    accounts: dict[Name, Account] = Field(
        min_length=1,
        json_schema_extra={"additionalProperties": False},
        description="IMAP accounts by name (letters, digits, '.', '_', '-'); names become metric labels.",
    )
    pairs: dict[Name, Pair] = Field(
        min_length=1,
        json_schema_extra={"additionalProperties": False},
        description=(
            "Pairs by name, as written (without defaults: use Config.pair(name) / effective_pairs() for the "
            "settings that apply). Optional when pair_sets gives pairs."
        ),
    )
    pair_sets: dict[Name, PairSet] = Field(
        default={},
        json_schema_extra={"additionalProperties": False},
        description=(
            "Pairs from lists of accounts (CSV or imapsync sync_loop files) by set name: each row becomes the "
            "pair <set>-<first column> (with defaults inherited like any pair). Columns named "
            f"{_PAIR_SET_COLUMNS_NOTE} set that option for their row (lists separated by '|'; empty: the "
            "template's value)."
        ),
    )

    _effective_pairs: dict[str, Pair] = PrivateAttr(default_factory=dict)
    _account_presets: list[AppliedPreset] = PrivateAttr(default_factory=list)
    _pair_presets: dict[str, list[AppliedPreset]] = PrivateAttr(default_factory=dict)
    _source_path: Path | None = PrivateAttr(default=None)
    _pair_set_counts: dict[str, int] = PrivateAttr(default_factory=dict)

    @property
    def pair_set_counts(self) -> dict[str, int]:
        """Pair set name -> how many pairs it gave."""
        return dict(self._pair_set_counts)

    @property
    def source_path(self) -> Path | None:
        """The file this config was read from (None when built in memory): named to other processes."""
        return self._source_path

    @model_validator(mode="wrap")
    @classmethod
    def _check_across_sections(
        cls, data: Any, handler: ModelWrapValidatorHandler[Config], info: ValidationInfo
    ) -> Config:
        """Check what no single section can: account references, and each pair once defaults are merged in.
        Pair sets are expanded first, into ordinary accounts and pairs."""
        context = info.context if isinstance(info.context, dict) else {}
        origins = context.get(PAIR_SET_ORIGINS)
        if not isinstance(origins, PairSetOrigins):
            origins = PairSetOrigins()
        data, template_issues = expand_pair_sets(data, context.get(CONFIG_DIR), origins)
        try:
            config = cls._validate_expanded(data, handler, template_issues, origins)
        except ValidationError:
            if origins.problems and context.get(PAIR_SET_ORIGINS) is not origins:
                raise InvalidConfig([list_problem(problem) for problem in origins.problems]) from None
            raise  # load_config reports the lists' problems with these
        if origins.problems:
            problems = sorted((list_problem(problem) for problem in origins.problems), key=file_and_line)
            raise InvalidConfig(problems)
        config._pair_set_counts = dict(origins.counts)
        return config

    @classmethod
    def _validate_expanded(
        cls,
        data: Any,
        handler: ModelWrapValidatorHandler[Config],
        template_issues: list[TemplateIssue],
        origins: PairSetOrigins,
    ) -> Config:
        reference_errors = [custom_error(issue.loc, issue.message, None) for issue in template_issues]
        reference_errors += account_reference_errors(data)
        data, account_presets = apply_account_presets(data)
        try:
            config = handler(data)
        except ValidationError as error:
            raise validation_error([*copy_errors(error), *reference_errors]) from None
        if reference_errors:
            raise validation_error(reference_errors)
        config._account_presets = account_presets
        config._apply_defaults()
        mailbox_errors = same_mailbox_errors(config) + shared_destination_errors(config, origins)
        if mailbox_errors:
            raise validation_error(mailbox_errors)
        config._label_secrets()
        return config

    def _apply_defaults(self) -> None:
        effective: dict[str, Pair] = {}
        errors: list[InitErrorDetails] = []
        sections = SectionCache(self.defaults)
        for name, pair in self.pairs.items():
            preset, self._pair_presets[name] = self._pair_preset_layer(name, pair, sections.defaults)
            try:
                effective[name] = inherit_defaults(self.defaults, pair, preset, sections)
            except ValidationError as error:
                note = " (with values inherited from defaults" + (" and provider presets)" if preset else ")")
                errors += copy_errors(error, prefix=("pairs", name), note=note)
        if errors:
            raise validation_error(errors)
        share_default_sections(self.pairs.values())
        self._effective_pairs = effective

    def _pair_preset_layer(
        self, name: str, pair: Pair, defaults: dict[str, Any]
    ) -> tuple[dict[str, Any], list[AppliedPreset]]:
        source, destination = self.accounts.get(pair.source), self.accounts.get(pair.destination)
        explicit = (defaults, pair.model_dump(exclude_unset=True))
        return pair_preset_layer(
            name,
            source.provider if source is not None else None,
            destination.provider if destination is not None else None,
            explicit,
        )

    def _label_secrets(self) -> None:
        for name, account in self.accounts.items():
            for field_name in ("password", "oauth2_token"):
                secret = getattr(account, field_name)
                if isinstance(secret, Secret):
                    secret.attach_label(f"accounts.{name}.{field_name}")
            if account.oauth2 is not None:
                account.oauth2.attach(name, self.state.path.parent / "oauth2" / f"{name}.json")

    def pair(self, name: str) -> Pair:
        """The pair called ``name`` with ``defaults`` merged in. Unknown name → :class:`UsageError` (exit 64)."""
        try:
            return self._effective_pairs[name]
        except KeyError:
            raise UsageError(f"unknown pair {name!r} (known: {known_names(self.pairs)})") from None

    def effective_pairs(self) -> dict[str, Pair]:
        """Every pair, in file order, with ``defaults`` merged in."""
        return dict(self._effective_pairs)

    def effective_pair(self, name: str) -> Pair:
        """One pair with ``defaults`` merged in (KeyError for an unknown name): no copy of the whole fleet."""
        return self._effective_pairs[name]

    def pair_count(self) -> int:
        return len(self._effective_pairs)

    def has_pair(self, name: str) -> bool:
        return name in self._effective_pairs

    def presets_of(self, pair_name: str) -> list[AppliedPreset]:
        """The provider preset values behind the pair's settings and its two accounts' (see
        :mod:`mailmirror.config.providers`), including those the config overrode."""
        pair = self.pairs.get(pair_name)
        if pair is None:
            return []
        prefixes = tuple(f"accounts.{account}." for account in (pair.source, pair.destination))
        accounts = [row for row in self._account_presets if row.setting.startswith(prefixes)]
        return accounts + self._pair_presets.get(pair_name, [])


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the config file at ``path``.

    Relative paths inside the file are relative to its directory. Secrets are not read (see
    :meth:`Secret.reveal`). Raises :class:`InvalidConfig` (a ``ConfigError``, exit 78) listing every
    problem as ``<path as given>:<line>: <dotted.path>: <message>``, sorted by line.
    """
    shown = os.fspath(path)
    document = read_yaml_document(shown)
    problem = top_level_problem(document.data, shown, Config)
    if problem is not None:
        raise InvalidConfig([problem])
    config_dir = Path(shown).absolute().parent
    origins = PairSetOrigins()
    try:
        config = Config.model_validate(document.data, context={CONFIG_DIR: config_dir, PAIR_SET_ORIGINS: origins})
    except ValidationError as error:
        raise InvalidConfig(problems_from(error, document, shown, Config, origins)) from None
    config._source_path = Path(shown).absolute()
    for first, second, identity in same_mailbox_accounts(config):
        line = document.line_for(("accounts", second))
        log.warning(
            "%s:%s: accounts.%s: the same mailbox (%s) as account '%s'; mailmirror treats them as one mailbox "
            "(one writer at a time); use one account name for it",
            shown,
            line,
            second,
            identity,
            first,
        )
    return config


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the config file, for editors: every object closed
    (``additionalProperties: false``), every option with a title, description and default."""
    schema = Config.model_json_schema(mode="validation")
    # accounts and pairs may all come from pair_sets: one of pairs and pair_sets is required
    schema["required"] = [name for name in schema.get("required", []) if name not in ("accounts", "pairs")]
    schema["anyOf"] = [{"required": ["pairs"]}, {"required": ["pair_sets"]}]
    if not schema["required"]:
        del schema["required"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "mailmirror configuration",
    }
