"""dashboards/: the Grafana dashboard, its provisioning, the Prometheus alert rules and their unit tests.

* The rules pass ``promtool check rules`` and their unit tests ``promtool test rules``, which show every
  alert firing when it should and silent in the normal case; the example Prometheus config passes
  ``promtool check config``. Every PromQL expression of the dashboard is checked by promtool too (as a
  recording rule, with Grafana's ``$__rate_interval`` replaced by a duration).
* Every metric the dashboard, the rules and the rule tests use is documented (:mod:`tests.promql`), and
  every dashboard query filters by the ``instance`` variable (and by ``pair`` where the metric has one).
* Each alert's runbook_url points at a section of docs/operations.md, which describes every panel.

Without promtool the promtool tests fail (``scripts/bootstrap --test`` installs it: Debian package
``prometheus``), unless MAILMIRROR_ALLOW_SKIP=1 makes them skip.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql import (
    DASHBOARD,
    DOCUMENTED_METRICS,
    HISTOGRAMS,
    METRIC_LABELS,
    ROOT,
    RULES,
    Matcher,
    Selector,
    all_panels,
    dashboard_expressions,
    dashboard_targets,
    dashboard_variable_queries,
    family,
    load_dashboard,
    load_rules,
    metric_names,
    rule_expressions,
    selectors,
    tokenize,
    variable_expression,
)
from tests.support import require_program

PROMETHEUS_DIR = ROOT / "dashboards" / "prometheus"
RULE_TESTS = PROMETHEUS_DIR / "mailmirror.rules.test.yml"
PROMETHEUS_EXAMPLE = PROMETHEUS_DIR / "prometheus.example.yml"
PROVISIONING = ROOT / "dashboards" / "provisioning"
OPERATIONS = ROOT / "docs" / "operations.md"

ALERTS = {
    "MailmirrorInstanceDown",
    "MailmirrorPairStale",
    "MailmirrorPairDown",
    "MailmirrorLagGrowing",
    "MailmirrorAuthenticationFailures",
    "MailmirrorMessageFailures",
    "MailmirrorConfigReloadFailed",
}
# Grafana's interval variables, replaced by a duration before promtool parses a dashboard expression
GRAFANA_INTERVALS = re.compile(r"\$\{?__(?:rate_interval|interval|range)\}?")


# -- promtool -----------------------------------------------------------------------------------------------


def promtool() -> str:
    return require_program("promtool", "prometheus")


def run_promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", RULES.name)
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name)
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_example_config() -> None:
    run_promtool("check", "config", PROMETHEUS_EXAMPLE.name)


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """Each expression, as the expr of a recording rule, with Grafana's interval variables replaced."""
    dashboard = load_dashboard()
    queries = [*dashboard_targets(dashboard), *dashboard_variable_queries(dashboard)]
    rules = [
        {"record": f"dashboard:query_{number}", "expr": GRAFANA_INTERVALS.sub("5m", expression)}
        for number, (_where, expression) in enumerate(queries)
    ]
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", "dashboard.rules.yml", cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# -- the rules ----------------------------------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped, spaces → hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def operations_anchors() -> set[str]:
    text = OPERATIONS.read_text(encoding="utf-8")
    return {github_anchor(match) for match in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def test_the_alerts_are_the_documented_ones() -> None:
    rules = load_rules()
    assert [rule.get("alert") for rule in rules if "alert" in rule] == [rule.get("alert") for rule in rules]
    assert sorted(rule["alert"] for rule in rules) == sorted(ALERTS)


@pytest.mark.parametrize("rule", load_rules(), ids=lambda rule: str(rule.get("alert")))
def test_alert_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("critical", "warning")
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    match = re.fullmatch(r"(?:.*/)?docs/operations\.md#([\w-]+)", annotations["runbook_url"])
    assert match, annotations["runbook_url"]
    assert match.group(1) == rule["alert"].lower()
    assert match.group(1) in operations_anchors(), f"docs/operations.md has no section #{match.group(1)}"


def test_every_alert_is_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == ALERTS
    assert silent == ALERTS


def test_rule_tests_feed_only_documented_metrics() -> None:
    """A typo in an input series would leave an alert silent for the wrong reason."""
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    series = [entry["series"] for case in tests["tests"] for entry in case["input_series"]]
    names = {selector.name for expression in series for selector in selectors(expression)}
    assert names
    assert {family(name) for name in names} <= DOCUMENTED_METRICS


# -- the dashboard ------------------------------------------------------------------------------------------


def test_dashboard_is_importable_and_provisionable() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "mailmirror"
    assert dashboard["id"] is None
    assert 36 <= dashboard["schemaVersion"] <= 39
    assert [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "instance", "pair"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # import replaces ${DS_PROMETHEUS}; provisioning leaves it, and Grafana falls back to a Prometheus source
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert "${DS_PROMETHEUS}" not in DASHBOARD.read_text(encoding="utf-8").replace('"value": "${DS_PROMETHEUS}"', ""), (
        "only the datasource variable may name the import input: panels use ${datasource}"
    )
    instance, pair = variables["instance"], variables["pair"]
    assert instance["query"]["query"] == "label_values(mailmirror_build_info, instance)"
    assert (
        pair["query"]["query"] == 'label_values(mailmirror_pair_start_timestamp_seconds{instance=~"$instance"}, pair)'
    )
    assert pair["multi"] is True
    assert pair["includeAll"] is True
    for variable in (instance, pair):
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["definition"] == variable["query"]["query"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = all_panels(load_dashboard())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for column in range(grid["x"], grid["x"] + grid["w"]):
                assert (row, column) not in cells, f"{panel['title']} overlaps panel {cells[(row, column)]}"
                cells[(row, column)] = panel["id"]


def test_every_panel_queries_the_datasource_variable() -> None:
    for panel in all_panels(load_dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), panel["id"]
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_every_query_filters_by_instance_and_pair() -> None:
    dashboard = load_dashboard()
    queries = [*dashboard_targets(dashboard), *dashboard_variable_queries(dashboard)]
    assert len(queries) > 30
    for where, expression in queries:
        found = selectors(expression)
        assert found, f"{where}: no metric in {expression}"
        for selector in found:
            assert Matcher("instance", "=~", "$instance") in selector.matchers or where == "variable instance", (
                f"{where}: {selector.name} is not filtered by instance"
            )
            if "pair" in METRIC_LABELS.get(family(selector.name), frozenset()) and where != "variable pair":
                assert Matcher("pair", "=~", "$pair") in selector.matchers, f"{where}: {selector.name} not by pair"


def test_every_metric_used_is_documented() -> None:
    expressions = dashboard_expressions() + rule_expressions()
    used = {name for expression in expressions for name in metric_names(expression, HISTOGRAMS)}
    assert used - DOCUMENTED_METRICS == set()
    # the dashboard shows the central metrics
    dashboard_used = set().union(*(metric_names(e, HISTOGRAMS) for e in dashboard_expressions()))
    assert {
        "mailmirror_pair_up",
        "mailmirror_pair_last_success_timestamp_seconds",
        "mailmirror_messages_copied_total",
        "mailmirror_copied_bytes_total",
        "mailmirror_pending_messages",
        "mailmirror_message_failures_total",
        "mailmirror_pass_duration_seconds",
        "mailmirror_push_latency_seconds",
        "mailmirror_connection_errors_total",
        "mailmirror_authentication_failures_total",
        "process_resident_memory_bytes",
    } <= dashboard_used


def test_histograms_are_queried_through_their_buckets() -> None:
    for expression in dashboard_expressions() + rule_expressions():
        for name in metric_names(expression):
            if family(name) in HISTOGRAMS:
                assert name.endswith("_bucket"), expression
                assert "histogram_quantile(" in expression, expression


def test_operations_doc_describes_every_panel() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    dashboard_section = text.split("\n## Dashboard", 1)[1].split("\n## ", 1)[0]
    for panel in all_panels(load_dashboard()):
        title = panel["title"]
        if panel["type"] == "row":
            assert f"\n### {title}\n" in dashboard_section, f"docs/operations.md has no heading for row {title!r}"
        else:
            assert f"**{title}**" in dashboard_section, f"docs/operations.md does not describe panel {title!r}"


def test_operations_doc_has_a_section_per_alert() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    alerts_section = text.split("\n## Alerts", 1)[1].split("\n## ", 1)[0]
    assert sorted(re.findall(r"^### (\w+)$", alerts_section, flags=re.MULTILINE)) == sorted(ALERTS)


def test_provisioning_files() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards.yaml").read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    sources = yaml.safe_load((PROVISIONING / "datasources.yaml").read_text(encoding="utf-8"))
    assert sources["apiVersion"] == 1
    assert [source["type"] for source in sources["datasources"]] == ["prometheus"]


def test_example_scrape_config_uses_the_job_the_alerts_expect() -> None:
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text(encoding="utf-8"))
    assert [job["job_name"] for job in config["scrape_configs"]] == ["mailmirror"]
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    assert config["rule_files"] == [RULES.name]
    assert 'up{job="mailmirror"}' in rule_expressions()[0]


# -- the PromQL extractor -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("up", {"up"}),
        ('up{job="mailmirror"} == 0', {"up"}),
        # functions, aggregations with the grouping before or after, durations, Grafana variables
        (
            'sum by (pair) (rate(mailmirror_messages_copied_total{instance=~"$instance"}[$__rate_interval]))',
            {"mailmirror_messages_copied_total"},
        ),
        ("sum(rate(a_total[5m])) without (le, instance)", {"a_total"}),
        ("max_over_time(a[1h30m:1m]) offset -5m @ start()", {"a"}),
        ("rate(a[${__interval}]) + rate(b[$interval]) + [[metric]]", {"a", "b"}),
        # label names and keywords that look like metric names
        ("a * on (pair, instance) group_left (version) b", {"a", "b"}),
        ("a * ignoring(side) group_right c", {"a", "c"}),
        ("a and on() b or c unless ignoring (x) d", {"a", "b", "c", "d"}),
        ("a > bool 0", {"a"}),
        ('a{by="on", sum=~"rate", group_left!="x"}', {"a"}),
        ('count_values("version", build_info) or vector(0)', {"build_info"}),
        ("topk(5, a) / scalar(b) + time() - Inf * NaN + 0x1f + 1e3 + .5", {"a", "b"}),
        ("a atan2 b", {"a", "b"}),
        # strings with things that look like selectors, comments
        ('label_replace(a, "dst", "$1 b{c=\\"d\\"}", "src", "(.*)") # e{f="g"}\n+ h', {"a", "h"}),
        ("`raw b` + c", {"c"}),
        # recording-rule names with colons; selectors by __name__; quoted (UTF-8) names
        ("job:mailmirror_copied:rate5m", {"job:mailmirror_copied:rate5m"}),
        ('{__name__="a", pair="x"} + {"b.c", pair="x"}', {"a", "b.c"}),
        ('{__name__=~"mailmirror_.*"}', set()),
        # a label list directly after an aggregation, no space
        ("sum without(pair)(a)", {"a"}),
        ("histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))", {"x_bucket"}),
    ],
)
def test_metric_names(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


def test_histogram_suffixes_map_to_the_family_when_asked() -> None:
    expression = (
        "rate(mailmirror_pass_duration_seconds_sum[5m]) / rate(mailmirror_pass_duration_seconds_count[5m])"
        " + mailmirror_push_latency_seconds_bucket + mailmirror_passes_total + mailmirror_pairs_count"
    )
    assert metric_names(expression, HISTOGRAMS) == {
        "mailmirror_pass_duration_seconds",
        "mailmirror_push_latency_seconds",
        "mailmirror_passes_total",
        "mailmirror_pairs_count",  # not a histogram: stays
    }
    assert "mailmirror_pass_duration_seconds_sum" in metric_names(expression)


def test_selectors_keep_their_matchers() -> None:
    assert selectors('a{x="1", y!~"2"}[5m] or b') == [
        Selector("a", (Matcher("x", "=", "1"), Matcher("y", "!~", "2"))),
        Selector("b", ()),
    ]


def test_tokenizer_rejects_what_it_cannot_read() -> None:
    with pytest.raises(ValueError):
        tokenize("a ; b")
    with pytest.raises(ValueError):
        selectors("sum(rate(a[5m])")


@pytest.mark.parametrize(
    ("query", "expression"),
    [
        ("label_values(mailmirror_build_info, instance)", "mailmirror_build_info"),
        ('label_values(a{b=~"$c", d="e,f"}, pair)', 'a{b=~"$c", d="e,f"}'),
        ("label_values(instance)", None),
        ("label_names()", None),
        ("metrics(mailmirror_.*)", None),
        ("query_result(topk(5, a))", "topk(5, a)"),
        ("up", "up"),
    ],
)
def test_variable_expression(query: str, expression: str | None) -> None:
    assert variable_expression(query) == expression
