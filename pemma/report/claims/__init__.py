"""The PEMMA papers' claims as verdicts (verdicts), from a claims plan's units (plan), and what a
plan costs before it runs (cost)."""

from pemma.report.claims.plan import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_RUN,
    PLAN_KEYS,
    SUPPORTED,
    ClaimsPlan,
    Runs,
    load_plan,
    select,
    units,
)
from pemma.report.claims.verdicts import (
    CLAIMS,
    Verdict,
    decide,
    judge,
    to_markdown,
    trainable_share,
    verdict_table,
    write_claims,
)

__all__ = [
    "CLAIMS",
    "CONTRADICTED",
    "INCONCLUSIVE",
    "NOT_RUN",
    "PLAN_KEYS",
    "SUPPORTED",
    "ClaimsPlan",
    "Runs",
    "Verdict",
    "decide",
    "verdict_table",
    "judge",
    "load_plan",
    "select",
    "to_markdown",
    "trainable_share",
    "units",
    "write_claims",
]
