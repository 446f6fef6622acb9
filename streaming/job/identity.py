"""What names the scoring job wherever it runs: its name, its entry module and its metrics group.
Kept apart from the job's wiring so that tools (the CLI, the REST client) can use them without
importing PyFlink."""

JOB_NAME = "riskstream-scoring"
ENTRY_MODULE = "streaming.job.flink_main"  # what `flink run` runs
# The group of the job's own metrics under its operators' (streaming/job/; docs/monitoring.md): the
# REST API names them `<operator>.riskstream.<name>`, and a dead-letter counter
# `<operator>.riskstream.stage.<stage>.dead_lettered`.
METRICS_GROUP = "riskstream"


