"""Shared pieces of the motif dashboards: variables, query and panel builders, a grid, rendering.

Panel ids are set explicitly (Grafana keys panel state and links on them), so a builder passes
the id of every panel it adds; `Layout` refuses a duplicate.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueTextMode, GraphDrawStyle, LegendDisplayMode
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    GridPos,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from monitoring import config
from monitoring.promql import by, series
from motif.metrics import names

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
GENERATED = "Generated from monitoring/dashboards/{module}.py by `make dashboards`: do not edit the JSON."

SEL = config.DASHBOARD_SELECTOR
STAGE_INFO = series(names.STAGE_INFO, f"{SEL}, {config.DASHBOARD_STAGE_SELECTOR}")
TARGET = by(config.TARGET_LABELS)


def staged(expr: str) -> str:
    """Keep the series of `expr` whose process trains a selected stage (join on the target labels)."""
    return f"({expr} and on ({TARGET}) {STAGE_INFO})"


def with_stage(expr: str) -> str:
    """Add the `stage` label of the process to every series of `expr`."""
    return f"({expr} * on ({TARGET}) group_left (stage) {STAGE_INFO})"


def variables(b: dashboard.Dashboard) -> dashboard.Dashboard:
    """Datasource, namespace, job and stage variables, each narrowing the next."""
    step = series(names.STEP)
    b = b.with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    queries = (
        ("namespace", "Namespace", f"label_values({step}, namespace)"),
        ("job", "Job", f'label_values({step}{{namespace=~"$namespace"}}, job)'),
        ("stage", "Stage", f"label_values({series(names.STAGE_INFO, SEL)}, stage)"),
    )
    for name, label, query in queries:
        b = b.with_variable(
            dashboard.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .definition(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            # `.*` also matches an absent label (local runs have no namespace).
            .all_value(".*")
        )
    return b


def query(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool | None = None
) -> prometheus.Dataquery:
    """A Prometheus target; `instant` queries default to table format (one row per series)."""
    q = prometheus.Dataquery().expr(expr).ref_id(ref).legend_format(legend or "__auto")
    if instant:
        q = q.instant()
    if instant if table is None else table:
        q = q.format(PromQueryFormat.TABLE)
    return q


class Layout:
    """Places panels left to right on Grafana's 24-column grid; a row starts a new line."""

    def __init__(self, b: dashboard.Dashboard) -> None:
        self.b = b
        self.x = 0
        self.y = 0
        self.line_h = 0
        self.ids: set[int] = set()

    def _id(self, panel_id: int) -> int:
        if panel_id in self.ids:
            raise ValueError(f"duplicate panel id {panel_id}")
        self.ids.add(panel_id)
        return panel_id

    def row(self, panel_id: int, title: str) -> None:
        self._newline()
        self.b = self.b.with_row(
            dashboard.Row(title).id(self._id(panel_id)).grid_pos(GridPos(h=1, w=24, x=0, y=self.y))
        )
        self.y += 1

    def add(self, panel_id: int, panel: Any, w: int = 8, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel = panel.id(self._id(panel_id)).datasource(DATASOURCE).grid_pos(GridPos(h=h, w=w, x=self.x, y=self.y))
        self.b = self.b.with_panel(panel)
        self.x += w
        self.line_h = max(self.line_h, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.line_h
        self.x = 0
        self.line_h = 0


def new_dashboard(uid: str, title: str, module: str, about: str, time: tuple[str, str]) -> dashboard.Dashboard:
    b = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(f"{about} {GENERATED.format(module=module)}")
        .tags(["motif"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time(*time)
        .timezone("utc")
        .refresh(config.DASHBOARD_REFRESH)
    )
    return variables(b)


def graph(title: str, description: str, *queries: prometheus.Dataquery, unit: str = "short") -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .draw_style(GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(None)
        .legend(_legend())
    )
    for q in queries:
        p = p.with_target(q)
    return p


def _legend() -> Any:
    from grafana_foundation_sdk.builders.common import VizLegendOptions

    return VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement("bottom").show_legend(True)


def single(
    title: str, description: str, q: prometheus.Dataquery, unit: str = "short", name: bool = False
) -> stat.Panel:
    p = stat.Panel().title(title).description(description).unit(unit).with_target(q)
    if name:
        p = p.text_mode(BigValueTextMode.NAME)
    return p


def bars(title: str, description: str, q: prometheus.Dataquery, unit: str = "short") -> bargauge.Panel:
    return bargauge.Panel().title(title).description(description).unit(unit).with_target(q)


def grid(
    title: str, description: str, *queries: prometheus.Dataquery, columns: dict[str, str] | None = None
) -> table.Panel:
    """A table of instant queries merged on their labels; `columns` renames value columns, hides the rest."""
    p = table.Panel().title(title).description(description)
    for q in queries:
        p = p.with_target(q)
    if len(queries) > 1:
        p = p.with_transformation(DataTransformerConfig(id_val="merge", options={}))
    hidden = {"Time": True}
    if not columns:
        hidden["Value"] = True
    organize = {"excludeByName": hidden, "renameByName": columns or {}}
    return p.with_transformation(DataTransformerConfig(id_val="organize", options=organize))


def render(b: dashboard.Dashboard) -> str:
    """Deterministic JSON of a dashboard (sorted keys, trailing newline)."""
    return json.dumps(b.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
