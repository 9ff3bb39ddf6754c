"""Growth view: the stages of a growth recipe side by side (loss across growth events, mask ramp, tokens,
benchmark scores per stage, held-out bits per byte per language over training).

Each stage is its own job; series are labelled with their stage by joining on `motif_stage_info`
at every evaluation point, so a process that trains several stages in turn (the local demo) is
still split correctly.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from monitoring import config
from monitoring.dashboards.common import (
    DATASOURCE,
    SEL,
    STAGE_INFO,
    Layout,
    bars,
    graph,
    grid,
    new_dashboard,
    query,
    with_stage,
)
from monitoring.promql import series
from motif.metrics import names

UID = "motif-growth"
R = config.DASHBOARD_RATE
WHOLE = "[$__range:$__interval]"


def build() -> dashboard.Dashboard:
    b = new_dashboard(
        UID,
        "motif / Growth",
        "growth",
        "Growth stages compared: loss before and after each growth event, MSG mask ramp, tokens per stage, "
        "benchmark scores per stage (Korean vs English) and held-out bits per byte per language.",
        config.GROWTH_DASHBOARD_TIME,
    )
    info = series(names.STAGE_INFO, SEL)
    b = b.annotation(
        dashboard.AnnotationQuery()
        .name("Stage start")
        .datasource(DATASOURCE)
        .enable(True)
        .icon_color("orange")
        # A stage_info series that did not exist a minute earlier: a stage (growth event) began.
        .expr(f"max by (job, stage, growth) ({STAGE_INFO} unless {info} offset 1m)")
        .title_format("{{stage}} started")
        .text_format("growth: {{growth}}, job: {{job}}")
        .step("1m")
    )
    g = Layout(b)
    loss = with_stage(series(names.LOSS, SEL))
    step = series(names.STEP, SEL)
    early = config.GROWTH_EARLY_STEPS

    g.row(1, "Stages")
    g.add(
        2,
        grid(
            "Stages",
            "Every stage trained in the time range: growth method, size, parallelism.",
            query(
                f"max by (job, stage, growth, params, world_size, engine) (last_over_time({STAGE_INFO}[$__range]))",
                instant=True,
            ),
        ),
        w=12,
        h=7,
    )
    g.add(
        3,
        bars(
            "Tokens per stage",
            "Training tokens consumed by each stage and language (largest counter value).",
            query(
                f"sum by (stage, language) (max_over_time({with_stage(series(names.TOKENS, SEL))}{WHOLE}))",
                "{{stage}} {{language}}",
                instant=True,
                table=False,
            ),
        ),
        w=12,
        h=7,
    )

    g.row(10, "Loss across growth events")
    g.add(
        11,
        graph(
            "Loss by stage",
            "Loss per stage and language: a growth event should not move it (function preserved).",
            query(f"avg by (stage, language) ({loss})", "{{stage}} {{language}}"),
        ),
        w=24,
        h=9,
    )
    g.add(
        12,
        grid(
            "Loss at the start and end of each stage",
            f"Mean loss over a stage's first {early} steps against its last loss: the start of one stage should "
            "match the end of the stage it grew from.",
            query(
                f"avg by (stage, language) (avg_over_time(({loss} and on ({', '.join(config.TARGET_LABELS)}) "
                f"({step} <= {early})){WHOLE}))",
                instant=True,
            ),
            query(f"avg by (stage, language) (last_over_time({loss}{WHOLE}))", ref="B", instant=True),
            columns={"Value #A": f"loss, first {early} steps", "Value #B": "loss, last step"},
        ),
        w=14,
        h=7,
    )
    g.add(
        13,
        grid(
            "Growth check: loss before and after growing",
            "Loss of the input model and of the grown one on the same first batch of a growing stage "
            "(motif_growth_loss): equal when the growth preserved the model's function.",
            query(
                f"max by (stage, when) (last_over_time({with_stage(series(names.GROWTH_LOSS, SEL))}{WHOLE}))",
                instant=True,
            ),
            columns={"Value": "loss"},
        ),
        w=10,
        h=7,
    )

    g.row(20, "Growth progress")
    g.add(
        21,
        graph(
            "MSG mask ramp",
            "Mask value per stage: 0 -> 1 over ramp_steps after an MSG growth event.",
            query(f"max by (stage) ({with_stage(series(names.GROWTH_MASK, SEL))})", "{{stage}}"),
            unit="percentunit",
        ),
        w=8,
    )
    g.add(
        22,
        graph(
            "Step by stage",
            "Optimizer steps completed, per stage.",
            query(f"max by (stage) ({with_stage(step)})", "{{stage}}"),
        ),
        w=8,
    )
    g.add(
        23,
        graph(
            "Tokens/s by stage",
            "Training throughput per stage: growth makes each step more expensive.",
            query(f"sum by (stage) ({with_stage(f'rate({series(names.TOKENS, SEL)}[{R}])')})", "{{stage}}"),
        ),
        w=8,
    )
    evaluation(g)
    return g.b


def evaluation(g: Layout) -> None:
    """Benchmark scores per stage (pushed by `motif eval`) and held-out bits per byte over training."""
    # Pushed series carry the stage, not the training job's labels: they are selected by stage alone.
    stage = config.DASHBOARD_STAGE_SELECTOR
    g.row(30, "Evaluation: Korean up, English kept")
    for panel_id, language, tasks in ((31, "Korean", config.KOREAN_TASKS), (32, "English", config.ENGLISH_TASKS)):
        score = series(names.EVAL_SCORE, f'{stage}, metric="{config.EVAL_METRIC}", task=~"{tasks}"')
        g.add(
            panel_id,
            bars(
                f"{language} benchmarks per stage",
                f"{config.EVAL_METRIC} of each stage's final checkpoint on the {language} benchmarks "
                "(lm-evaluation-harness through motif eval, pushed when the stage's eval Job finishes).",
                query(
                    f"max by (stage, task) (last_over_time({score}[$__range]))",
                    "{{stage}} {{task}}",
                    instant=True,
                    table=False,
                ),
                unit="percentunit",
            ),
            w=12,
            h=8,
        )
    every = series(names.EVAL_SCORE, stage)
    g.add(
        33,
        grid(
            "Every benchmark score",
            "All tasks and metrics motif eval pushed, subtasks included (standard errors are in summary.json).",
            query(f"max by (stage, task, metric) (last_over_time({every}[$__range]))", instant=True),
            columns={"Value": "score"},
        ),
        w=24,
        h=8,
    )
    g.add(
        34,
        graph(
            "Held-out bits per byte over training",
            "Bits per byte of each language's held-out text (motif.eval.heldout, never trained on), scored every "
            "motif.eval.every_steps: Korean should fall; English should not rise (forgetting).",
            query(
                f"avg by (stage, language) ({with_stage(series(names.HELDOUT_BITS_PER_BYTE, SEL))})",
                "{{stage}} {{language}}",
            ),
        ),
        w=12,
        h=8,
    )
    lang = config.FORGETTING_LANGUAGE
    key = "namespace, job, language"
    now = series(names.HELDOUT_BITS_PER_BYTE, f'{SEL}, language="{lang}"')
    start = f'{config.HELDOUT_START_RECORD}{{{SEL}, language="{lang}"}}'
    g.add(
        35,
        graph(
            f"Held-out bits per byte ({lang}) above the stage start",
            f"Relative rise of the {lang} held-out bits per byte over the job's first score; "
            f"MotifEnglishForgetting fires above {config.THRESHOLDS.forgetting_margin:.0%}.",
            query(f"max by ({key}) ({now}) / on ({key}) {start} - 1", "{{job}}"),
            unit="percentunit",
        ),
        w=12,
        h=8,
    )
