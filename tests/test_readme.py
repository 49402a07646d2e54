"""The README as the reference: every job key in its table with the model's type, default and
range; the local service section; the torch note; the two first commands unchanged.

When the table drifts, the failure lists each problem with the exact row to put in it; or run
`python -m tests.support.readme_keys --write` and fill in the meanings marked TODO.
"""

from __future__ import annotations

import dataclasses

from tests.support.readme_keys import README, TODO, check, model_rows, render_table, table_rows


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_job_key_table_matches_the_job_model() -> None:
    problems = check(_readme())
    assert not problems, (
        "README.md's job key table (### Job keys and their ranges) is out of date:\n\n"
        + "\n\n".join(problems)
        + "\n\nOr rewrite it: python -m tests.support.readme_keys --write"
    )
    rows = table_rows(_readme())
    for section, key in [
        ("run", "max_requests_per_minute"),
        ("input", "system"),
        ("endpoint", "api_url"),
        ("run", "grace_period"),
        ("output", "commit_rows"),
    ]:
        assert rows[section, key].meaning


def test_a_missing_key_or_a_changed_default_fails_with_the_row_to_put_in() -> None:
    readme = _readme()
    rows = table_rows(readme)
    grace = next(r for r in model_rows() if r.key == "grace_period")
    grace_line = dataclasses.replace(grace, meaning=rows["run", "grace_period"].meaning).line()
    commit = dataclasses.replace(rows["output", "commit_rows"])
    assert grace_line in readme and commit.line() in readme
    stale = dataclasses.replace(commit, default="`500`").line()
    edited = readme.replace(grace_line + "\n", "").replace(commit.line(), stale)
    edited = edited.replace("| `[run]` | `concurrency` |", "| `[run]` | `concurency` |")

    problems = check(edited)
    assert len(problems) == 4, problems
    missing, default, typo_missing, typo_extra = sorted(problems, key=_order)
    assert missing.startswith("[run] grace_period is missing; add this row after the row of ")
    to_add = f"| `[run]` | `grace_period` | number | `10` | from 0 to 604,800 (seconds); {TODO} |"
    assert missing.endswith("(and say what it does):\n" + to_add)
    assert default.startswith(
        "[output] commit_rows: the README says type 'integer', default '`500`'"
    )
    assert default.endswith("Replace its row with:\n" + commit.line())
    assert typo_missing.startswith("[run] concurrency is missing")
    assert typo_extra == "[run] concurency is not a job key any more; remove its row"

    # --write's table puts back what the model says and keeps the meanings.
    regenerated = render_table(edited)
    assert commit.line() in regenerated
    assert f"| {grace.default} | from 0 to 604,800 (seconds); {TODO} |" in regenerated


def _order(problem: str) -> int:
    for i, start in enumerate(
        ["[run] grace", "[output] commit", "[run] concurrency", "[run] concu"]
    ):
        if problem.startswith(start):
            return i
    return 9


def test_the_local_service_section_and_the_torch_note() -> None:
    readme = _readme()
    local = readme.split("## The local service", 1)[1]
    for needed in (
        "$BATCHRUN_HOME/local",
        "service.json",
        "--local",
        "batchrun serve",
        "BATCHRUN_ENDPOINTS_API=local",
    ):
        assert needed in local, needed
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme


def test_the_first_two_commands_stay_as_they_are() -> None:
    first_block = _readme().split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands == [
        "pip install torch==2.13.0 && pip install -e '.[local,models]' && "
        "batchrun run jobs/quickstart.toml",
        "pip install torch==2.13.0 && pip install -e '.[local,models,dev,ray]' && python -m pytest -q",
    ]
