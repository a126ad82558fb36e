"""The CLI at the ci profile, in this process or as a process to interrupt."""

from __future__ import annotations


def ci_args(results, *extra, data=None, suite="smoke"):
    """`run --suite SUITE --profile ci --results RESULTS [--data DATA] EXTRA...` as CLI arguments."""
    args = ["run", "--suite", suite, "--profile", "ci", "--results", str(results)]
    if data is not None:
        args += ["--data", str(data)]
    return [*args, *extra]


def ci_run(results, *extra, data=None, suite="smoke"):
    """`pemma-bench run` at the ci profile (see ci_args), in this process."""
    from typer.testing import CliRunner

    from pemma.cli import app

    return CliRunner().invoke(app, ci_args(results, *extra, data=data, suite=suite))


def sigterm_once(command: list[str], marker: str) -> tuple[int, str]:
    """Start `command`, wait (up to 5 min) for an output line holding `marker`, then 2 s more, send
    SIGTERM; its exit code and whole output."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.time() + 300
    for line in proc.stdout:
        seen.append(line)
        if marker in line or time.time() > deadline:
            break
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    return proc.returncode, out
