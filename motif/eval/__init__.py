"""Evaluation of every stage: lm-evaluation-harness benchmarks and held-out bits per byte.

model       a motif checkpoint (plain or mid-growth) as the model object lm-eval drives
placement   blocks on successive devices: a 102B checkpoint across the GPUs of one node
lm          the `motif` model class registered with lm-eval (subclasses HFLM)
tasks       task names -> leaf tasks; local data on a volume instead of the hub (offline)
heldout     held-out bits per byte per language (`HeldoutSet`, also called by the trainer)
results     lm-eval's results JSON, summary.json, reuse of a finished result, the table
push        scores to a Pushgateway as motif_eval_score{stage, task, metric}
command     `motif eval`
demo        the demo's tiny local tasks and its score table per stage

Nothing here is imported by `import motif.eval`: lm-eval and torch load only where used.
"""
