"""A plug-in that adds the runner's test stage `counting` (tests/counting_stage.py) to the stage
table, so a CLI test can run a real, instant stage: `plugins=[tests.counting_plugin]
stages=[counting]`."""

from crescent import cache

cache.STAGES["counting"] = "tests.counting_stage"
