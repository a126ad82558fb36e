"""nox sessions: tests (what CI runs), fast (no slow tests), lint, smoke (the few-minute CPU suite),
docs (the site, strict)."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"


def _install(session: nox.Session) -> None:
    session.install("torch==2.13.0")
    session.install("-c", "constraints.txt", "-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session
def fast(session: nox.Session) -> None:
    """The developer's loop: every test not marked slow."""
    _install(session)
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-c", "constraints.txt", "ruff")
    session.run("ruff", "check", "pemma", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "pemma", "tests", "noxfile.py")


@nox.session
def smoke(session: nox.Session) -> None:
    _install(session)
    session.run("pemma-bench", "run", "--suite", "smoke", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    _install(session)
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")
