"""The config reference (docs/configuration.md), generated from the config models' JSON Schema.

`mailmirror config reference > docs/configuration.md` regenerates it; a test fails when it drifts.
"""

from __future__ import annotations

import json
from typing import Any

from mailmirror.config.config_file import config_json_schema

SECTIONS = [
    ("Top level", None),
    ("state", "StateConfig"),
    ("metrics", "MetricsConfig"),
    ("log", "LogConfig"),
    ("daemon", "DaemonConfig"),
    ("accounts.NAME", "Account"),
    ("accounts.NAME.oauth2", "OAuth2Client"),
    ("Secrets ({env: …} | {file: …} | {command: […]})", "Secret"),
    ("pairs.NAME (and defaults)", "Pair"),
    ("pairs.NAME.schedule", "Schedule"),
    ("pairs.NAME.folders", "FolderRules"),
    ("pairs.NAME.folders.rename[]", "RenameRule"),
    ("pairs.NAME.messages", "MessageRules"),
    ("pairs.NAME.flags", "FlagConfig"),
    ("pairs.NAME.deletions", "DeletionRules"),
]


def _type(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        return str(spec["$ref"]).rsplit("/", 1)[-1]
    if "enum" in spec:
        return " \\| ".join(str(value) for value in spec["enum"])
    if "anyOf" in spec:
        return " or ".join(_type(option) for option in spec["anyOf"])
    kind = spec.get("type", "any")
    if kind == "array":
        return f"list of {_type(spec.get('items', {}))}"
    if kind == "object" and "additionalProperties" in spec and isinstance(spec["additionalProperties"], dict):
        return f"map of {_type(spec['additionalProperties'])}"
    if "pattern" in spec and kind == "string":
        return "string"
    return str(kind)


def _default(spec: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in spec:
        return ""
    return f"`{json.dumps(spec['default'], ensure_ascii=False)}`"


def _table(definition: dict[str, Any]) -> list[str]:
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    required = set(definition.get("required", []))
    for name, spec in definition.get("properties", {}).items():
        description = " ".join(str(spec.get("description", "")).split()).replace("|", "\\|")
        lines.append(f"| `{name}` | {_type(spec)} | {_default(spec, name in required)} | {description} |")
    return lines


def render() -> str:
    schema = config_json_schema()
    definitions = schema["$defs"]
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config models by `mailmirror config reference` — do not edit by hand.",
        "`config.example.yaml` shows every option in context; `mailmirror config schema` prints the JSON Schema.",
        "Durations: `30s`, `15m`, `2h`, `7d`, `1w` or seconds. Sizes: `512KB`, `50MB` (10^6), `1.5MiB` (2^20) "
        "or bytes.",
        "Bounds: no duration above 100 years, no size above 8 PiB; some options are bounded tighter "
        "(`schedule.every` 366d, `schedule.jitter` 1w, `timeout` and `daemon.stop_timeout` 1h, `transfer.backoff` "
        "5m, `daemon.backoff_max` 1w): an error names the bound. Numbers are numbers: `yes`, `no`, `on`, `off` "
        "(booleans in YAML) are refused where a number is expected.",
        "",
    ]
    for title, key in SECTIONS:
        definition = schema if key is None else definitions[key]
        lines += [f"## {title}", "", " ".join(str(definition.get("description", "")).split()), ""]
        lines += _table(definition)
        lines.append("")
    return "\n".join(lines)
