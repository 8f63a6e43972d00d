"""What the Grafana dashboard and the Prometheus rules in ``dashboards/`` query, without a PromQL library.

* :data:`METRIC_LABELS` / :data:`DOCUMENTED_METRICS`: every metric family the dashboard and the rules may
  use: what ``mailmirror run`` serves on ``/metrics`` (:data:`EXPOSED_METRICS`) plus ``up``, which
  Prometheus adds itself. Histograms are named by family (``mailmirror_pass_duration_seconds``); their
  samples are ``_bucket``, ``_sum`` and ``_count``.
* :func:`selectors` / :func:`metric_names`: the metric selectors of a PromQL expression, found by a small
  tokenizer that knows which identifiers are functions, aggregations, keywords, label names (inside
  ``{...}`` and after ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``), durations,
  numbers, strings and Grafana variables (``$pair``, ``${pair}``, ``[[pair]]``, ``$__rate_interval``).
  It is no validator: ``promtool`` checks the rules, Grafana the dashboard.
* :func:`dashboard_expressions` / :func:`rule_expressions`: every PromQL expression of
  ``dashboards/mailmirror.json`` (panel targets, panels nested in rows, template variable queries) and of
  ``dashboards/prometheus/mailmirror.rules.yml``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "mailmirror.json"
RULES = ROOT / "dashboards" / "prometheus" / "mailmirror.rules.yml"

# -- the documented metrics ---------------------------------------------------------------------------------

_PAIR = frozenset({"pair"})
_PAIR_SIDE = frozenset({"pair", "side"})
_PAIR_REASON = frozenset({"pair", "reason"})
_ACCOUNT = frozenset({"account"})
_NONE: frozenset[str] = frozenset()

#: Metric family → the labels mailmirror sets (Prometheus adds ``instance`` and ``job`` to every series).
METRIC_LABELS: dict[str, frozenset[str]] = {
    # per pair, gauges
    "mailmirror_pair_up": _PAIR,
    "mailmirror_pair_last_success_timestamp_seconds": _PAIR,
    "mailmirror_pair_start_timestamp_seconds": _PAIR,
    "mailmirror_pair_expected_interval_seconds": _PAIR,
    "mailmirror_pair_consecutive_failures": _PAIR,
    "mailmirror_pair_pass_running": _PAIR,
    "mailmirror_pending_messages": _PAIR,
    "mailmirror_messages": _PAIR_SIDE,
    "mailmirror_folders": _PAIR_SIDE,
    # per pair, counters
    "mailmirror_messages_copied_total": _PAIR,
    "mailmirror_copied_bytes_total": _PAIR,
    "mailmirror_messages_adopted_total": _PAIR,
    "mailmirror_flag_updates_total": _PAIR,
    "mailmirror_messages_deleted_total": _PAIR_SIDE,
    "mailmirror_messages_skipped_total": _PAIR_REASON,
    "mailmirror_message_failures_total": _PAIR_REASON,
    "mailmirror_folder_errors_total": _PAIR,
    "mailmirror_passes_total": frozenset({"pair", "outcome"}),
    # per account, counters
    "mailmirror_connection_errors_total": _ACCOUNT,
    "mailmirror_authentication_failures_total": _ACCOUNT,
    # histograms (families)
    "mailmirror_pass_duration_seconds": _PAIR,
    "mailmirror_push_latency_seconds": _PAIR,
    # instance
    "mailmirror_build_info": frozenset({"version"}),
    "mailmirror_config_last_reload_successful": _NONE,
    "mailmirror_config_last_reload_success_timestamp_seconds": _NONE,
    "mailmirror_pairs": _NONE,
    # prometheus-client's process and platform collectors
    "process_virtual_memory_bytes": _NONE,
    "process_resident_memory_bytes": _NONE,
    "process_start_time_seconds": _NONE,
    "process_cpu_seconds_total": _NONE,
    "process_open_fds": _NONE,
    "process_max_fds": _NONE,
    "python_info": frozenset({"implementation", "major", "minor", "patchlevel", "version"}),
    # added by Prometheus for every scrape target
    "up": _NONE,
}

#: Histogram families: their samples are FAMILY_bucket (with ``le``), FAMILY_sum and FAMILY_count.
HISTOGRAMS = frozenset({"mailmirror_pass_duration_seconds", "mailmirror_push_latency_seconds"})
#: Every metric family the dashboard and the alert rules may use.
DOCUMENTED_METRICS = frozenset(METRIC_LABELS)
#: The families ``mailmirror run`` itself serves on /metrics (``up`` comes from Prometheus).
EXPOSED_METRICS = DOCUMENTED_METRICS - {"up"}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def family(name: str, histograms: frozenset[str] = HISTOGRAMS) -> str:
    """``mailmirror_pass_duration_seconds_bucket`` → ``mailmirror_pass_duration_seconds``; other names as
    they are (``mailmirror_passes_total`` stays: only the suffixes of the given histograms are mapped)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


# -- the tokenizer ------------------------------------------------------------------------------------------

AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
#: Keywords that are never metric names. ``bool`` follows a comparison, ``offset`` takes a duration.
KEYWORDS = frozenset({"and", "or", "unless", "atan2", "bool", "offset"})
#: Keywords followed by a list of label names in parentheses (optional after group_left/group_right).
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_TOKEN = re.compile(
    r"""
      (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+(?::\w+)?\]\])
    | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<identifier>[a-zA-Z_:][\w:]*)
    | (?P<operator>=~|!~|!=|==|>=|<=|[-+*/%^<>=!,(){}\[\]@:])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # string, variable, duration, number, identifier, operator
    text: str
    position: int


class PromQLSyntaxError(ValueError):
    """The expression could not be tokenized or its brackets do not balance."""


def tokenize(expression: str) -> list[Token]:
    """The tokens of ``expression``, without whitespace and comments."""
    tokens = []
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            raise PromQLSyntaxError(
                f"unexpected {expression[position : position + 20]!r} at {position} in {expression!r}"
            )
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append(Token(kind, match.group(), position))
        position = match.end()
    return tokens


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # = != =~ !~
    value: str  # the string's content, quotes removed (escapes kept as written)


@dataclass(frozen=True)
class Selector:
    """One vector or range selector: ``name{matchers}``; ``name`` is empty for ``{__name__=~"..."}``."""

    name: str
    matchers: tuple[Matcher, ...]

    def matcher(self, label: str) -> Matcher | None:
        return next((m for m in self.matchers if m.label == label), None)


def _unquote(text: str) -> str:
    return text[1:-1]


def _closing(tokens: list[Token], start: int, opening: str, closing: str) -> int:
    """Index of the token that closes the bracket at ``tokens[start]``."""
    depth = 0
    for index in range(start, len(tokens)):
        if tokens[index].text == opening and tokens[index].kind == "operator":
            depth += 1
        elif tokens[index].text == closing and tokens[index].kind == "operator":
            depth -= 1
            if depth == 0:
                return index
    raise PromQLSyntaxError(f"unbalanced {opening!r} at {tokens[start].position}")


def _check_balanced(tokens: list[Token]) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[Token] = []
    for token in tokens:
        if token.kind != "operator":
            continue
        if token.text in "([{":
            stack.append(token)
        elif token.text in pairs and (not stack or stack.pop().text != pairs[token.text]):
            raise PromQLSyntaxError(f"unbalanced {token.text!r} at {token.position}")
    if stack:
        raise PromQLSyntaxError(f"{stack[-1].text!r} at {stack[-1].position} is never closed")


def _matchers(tokens: list[Token], start: int, end: int) -> tuple[str, tuple[Matcher, ...]]:
    """Parse ``{...}`` between tokens[start] ('{') and tokens[end] ('}'): (a quoted metric name, matchers)."""
    name = ""
    matchers = []
    index = start + 1
    while index < end:
        token = tokens[index]
        if token.text == "," and token.kind == "operator":
            index += 1
            continue
        following = tokens[index + 1] if index + 1 < end else None
        is_op = following is not None and following.kind == "operator" and following.text in ("=", "!=", "=~", "!~")
        if token.kind in ("identifier", "string") and is_op and index + 2 < end:
            assert following is not None
            label = _unquote(token.text) if token.kind == "string" else token.text
            value = tokens[index + 2]
            if value.kind != "string":
                raise PromQLSyntaxError(f"label {label} compared with {value.text!r}, not a string")
            matchers.append(Matcher(label, following.text, _unquote(value.text)))
            index += 3
        elif token.kind == "string":  # {"metric.name", ...}: a quoted metric name (UTF-8 names)
            name = _unquote(token.text)
            index += 1
        else:
            raise PromQLSyntaxError(f"unexpected {token.text!r} at {token.position} in a label matcher")
    return name, tuple(matchers)


def selectors(expression: str) -> list[Selector]:
    """Every metric selector in ``expression``, in order (a name used twice appears twice)."""
    tokens = tokenize(expression)
    _check_balanced(tokens)
    found: list[Selector] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.kind == "operator" and token.text == "[":  # range or subquery: durations, variables
            index = _closing(tokens, index, "[", "]") + 1
            continue
        if token.kind == "operator" and token.text == "{":  # a selector without a bare name
            end = _closing(tokens, index, "{", "}")
            name, matchers = _matchers(tokens, index, end)
            if not name:
                by_name = next((m for m in matchers if m.label == "__name__" and m.op == "="), None)
                name = by_name.value if by_name else ""
            found.append(Selector(name, tuple(m for m in matchers if m.label != "__name__" or m.op != "=")))
            index = end + 1
            continue
        if token.kind != "identifier":
            index += 1
            continue
        word = token.text
        lowered = word.lower()
        opens = following is not None and following.kind == "operator" and following.text == "("
        if lowered in LABEL_LIST_KEYWORDS:
            index = _closing(tokens, index + 1, "(", ")") + 1 if opens else index + 1
        elif opens or lowered in KEYWORDS or lowered in AGGREGATIONS:
            index += 1  # a function call (its arguments are looked at in turn), an aggregation, a keyword
        elif lowered in ("inf", "nan"):
            index += 1
        elif following is not None and following.kind == "operator" and following.text == "{":
            end = _closing(tokens, index + 1, "{", "}")
            _name, matchers = _matchers(tokens, index + 1, end)
            found.append(Selector(word, matchers))
            index = end + 1
        else:
            found.append(Selector(word, ()))
            index += 1
    return found


def metric_names(expression: str, histograms: frozenset[str] | None = None) -> set[str]:
    """The metric names ``expression`` selects; with ``histograms``, their ``_bucket``/``_sum``/``_count``
    samples are named by family. Selectors without a fixed name (``{__name__=~"..."}``) are left out."""
    names = {selector.name for selector in selectors(expression) if selector.name}
    if histograms is None:
        return names
    return {family(name, histograms) for name in names}


# -- where the expressions are ------------------------------------------------------------------------------

_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((?P<args>.*)\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((?P<query>.*)\)\s*$", re.DOTALL)


def variable_expression(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query: ``label_values(SELECTOR, label)`` →
    SELECTOR, ``query_result(QUERY)`` → QUERY, ``label_values(label)``/``label_names()``/``metrics(re)``
    → None (no expression), anything else → the query itself."""
    if match := _LABEL_VALUES.match(query):
        arguments = match.group("args")
        selector, comma, _label = arguments.rpartition(",")
        return selector.strip() if comma else None
    if match := _QUERY_RESULT.match(query):
        return match.group("query").strip()
    if re.match(r"^\s*(label_names|metrics)\s*\(", query):
        return None
    return query


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row keeps its panels inside


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels inside collapsed rows included."""
    return list(_panels(dashboard.get("panels", [])))


def dashboard_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expression) for every panel target of the dashboard."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            expression = target.get("expr")
            if expression:
                yield f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}", expression


def dashboard_variable_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expression) for every Prometheus query variable."""
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        expression = variable_expression(text)
        if expression:
            yield f"variable {variable.get('name')}", expression


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets (rows' panels included), variable queries."""
    dashboard = load_dashboard(path)
    return [expr for _where, expr in (*dashboard_targets(dashboard), *dashboard_variable_queries(dashboard))]


def load_rules(path: Path = RULES) -> list[dict[str, Any]]:
    """Every rule (alerting or recording) of the rules file, over all groups."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def rule_expressions(path: Path = RULES) -> list[str]:
    """The ``expr`` of every rule in the rules file."""
    return [str(rule["expr"]) for rule in load_rules(path)]
