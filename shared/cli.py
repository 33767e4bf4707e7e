"""The ``jetbridge`` command: validate and run pipelines here, and read their history.

Exit codes: 0 success, 1 a build that did not succeed, 2 a bad pipeline or bad
usage (as click reports usage errors), 3 JetBridge itself could not do the work.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from cloudevents.http import CloudEvent
from sqlalchemy import select

from shared import events
from shared import status as st
from shared.errors import JetBridgeError, PermanentError, PipelineError, VariableError
from shared.settings import Settings, env_name, load_settings

EXIT_OK = 0
EXIT_BUILD_FAILED = 1
EXIT_BAD_PIPELINE = 2
EXIT_ERROR = 3

SYMBOLS = {st.SUCCEEDED: "✓", st.FAILED: "✗", st.ERRORED: "!", st.ABORTED: "■", st.SKIPPED: "-"}
COLOURS = {
    st.SUCCEEDED: "green",
    st.FAILED: "red",
    st.ERRORED: "yellow",
    st.ABORTED: "magenta",
    st.SKIPPED: "bright_black",
}


class Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=env_name("data_dir"),
    show_envvar=True,
    help="Local state: database, artifact store, logs. Default: ./.jetbridge",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what JetBridge does.")
@click.version_option(package_name="jetbridge")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, verbose: bool) -> None:
    """JetBridge: Concourse pipelines, one pod per step."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings()
    except JetBridgeError as e:
        raise click.ClickException(str(e)) from e
    ctx.obj = Context(settings.with_overrides(data_dir=data_dir))


def _variables(var: Sequence[str], vars_file: Sequence[Path]) -> dict[str, Any]:
    from shared.pipeline import load_vars_file, parse_var_flags

    values: dict[str, Any] = {}
    for path in vars_file:
        values.update(load_vars_file(path))
    values.update(parse_var_flags(list(var)))
    return values


def _read_pipeline(path: Path, variables: dict[str, Any]) -> tuple[str, Any]:
    from shared.pipeline import parse_pipeline

    text = path.read_text()
    return text, parse_pipeline(text, source=str(path), variables=variables)


var_options = [
    click.option(
        "-v",
        "--var",
        "var",
        multiple=True,
        metavar="NAME=VALUE",
        help="Value of a ((var)) in the pipeline; repeatable.",
    ),
    click.option(
        "-l",
        "--vars-file",
        "vars_file",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="YAML file of ((var)) values; repeatable, later files win.",
    ),
]


def with_vars(f: Any) -> Any:
    for option in reversed(var_options):
        f = option(f)
    return f


def _bad_pipeline(e: PermanentError) -> None:
    click.secho(str(e), fg="red", err=True)
    sys.exit(EXIT_BAD_PIPELINE)


@cli.command()
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@with_vars
def validate(pipeline: Path, var: Sequence[str], vars_file: Sequence[Path]) -> None:
    """Check a pipeline file; print every problem with its YAML path and line."""
    try:
        _, model = _read_pipeline(pipeline, _variables(var, vars_file))
    except (PipelineError, VariableError) as e:
        _bad_pipeline(e)
    click.echo(f"{pipeline}: valid ({len(model.jobs)} job(s), {len(model.resources)} resource(s))")


@cli.command()
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-j", "--job", required=True, help="The job to run.")
@click.option("-p", "--pipeline-name", help="Name to keep the pipeline under. Default: file name.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait for the build.")
@click.option("--keep-artifacts", is_flag=True, help="Skip the reaper tick after the build.")
@click.option("--quiet", "-q", is_flag=True, help="Show step results only, not their logs.")
@with_vars
@pass_context
def run(
    ctx: Context,
    pipeline: Path,
    job: str,
    pipeline_name: str | None,
    timeout: float,
    keep_artifacts: bool,
    quiet: bool,
    var: Sequence[str],
    vars_file: Sequence[Path],
) -> None:
    """Run one job of a pipeline here, showing each step as it goes."""
    from shared.local import LocalCI

    variables = _variables(var, vars_file)
    try:
        text, model = _read_pipeline(pipeline, variables)
        model.job(job)
    except (PipelineError, VariableError) as e:
        _bad_pipeline(e)
    except KeyError as e:
        click.secho(f"{pipeline}: {e.args[0]}", fg="red", err=True)
        sys.exit(EXIT_BAD_PIPELINE)
    name = pipeline_name or _default_name(pipeline)
    try:
        with LocalCI(ctx.settings) as ci:
            ci.set_pipeline(name, text, variables)
            ci.bus.observe(lambda event: _progress(event, ci, quiet))
            started = datetime.now()
            build = ci.run_build(name, job, timeout=timeout)
            elapsed = (datetime.now() - started).total_seconds()
            colour = COLOURS.get(build.status, "white")
            click.secho(
                f"build {name}/{job} #{build.number} (id {build.id}) {build.status} "
                f"in {elapsed:.1f}s",
                fg=colour,
                bold=True,
            )
            if not keep_artifacts:
                report = ci.tick()
                click.echo(f"reaper: {report.summary()}")
    except JetBridgeError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        sys.exit(EXIT_BAD_PIPELINE if isinstance(e, PermanentError) else EXIT_ERROR)
    sys.exit(EXIT_OK if build.status == st.SUCCEEDED else EXIT_BUILD_FAILED)


def _default_name(path: Path) -> str:
    """``ci/app.yml`` is ``app``; ``examples/demo/pipeline.yml`` is ``demo``."""
    stem = path.stem
    if stem in ("pipeline", "ci") and path.resolve().parent.name:
        return path.resolve().parent.name
    return stem


def _progress(event: CloudEvent, ci: Any, quiet: bool) -> None:
    data = events.event_data(event)
    if event["type"] == events.STEP_READY:
        from shared.db import StepRow, transaction

        with transaction(ci.deps.sessions) as session:
            step = session.get(StepRow, data["step_id"])
            if step is not None:
                click.echo(f"▶ {step.kind} {step.name}")
    elif event["type"] == events.STEP_FINISHED:
        status = data["status"]
        line = f"{SYMBOLS.get(status, '?')} {data['kind']} {data['name']} {status}"
        if data.get("error"):
            line += f": {data['error']}"
        click.secho(line, fg=COLOURS.get(status))
        if not quiet:
            log = ci.deps.logs.read(data["build_id"], data["key"])
            for text in (log or b"").decode("utf-8", "replace").splitlines():
                click.echo(f"  │ {text}")


@cli.command()
@click.option("-n", "--count", default=20, show_default=True, help="How many builds to show.")
@pass_context
def builds(ctx: Context, count: int) -> None:
    """List recent builds, newest first."""
    from shared.db import BuildRow, PipelineRow, transaction

    with _deps(ctx) as deps, transaction(deps.sessions) as session:
        rows = session.execute(
            select(BuildRow, PipelineRow.name)
            .join(PipelineRow, PipelineRow.id == BuildRow.pipeline_id)
            .order_by(BuildRow.id.desc())
            .limit(count)
        ).all()
        if not rows:
            click.echo("no builds yet")
            return
        click.echo(f"{'id':>5}  {'build':<32} {'status':<10} {'started':<20} duration")
        for build, pipeline in rows:
            started = build.started_at.strftime("%Y-%m-%d %H:%M:%S") if build.started_at else "-"
            duration = (
                f"{(build.finished_at - build.started_at).total_seconds():.1f}s"
                if build.finished_at and build.started_at
                else "-"
            )
            label = f"{pipeline}/{build.job_name} #{build.number}"
            click.secho(
                f"{build.id:>5}  {label:<32} {build.status:<10} {started:<20} {duration}",
                fg=COLOURS.get(build.status),
            )


@cli.command()
@click.argument("build_id", type=int)
@click.option("-s", "--step", "step_name", help="Only this step (by name).")
@pass_context
def logs(ctx: Context, build_id: int, step_name: str | None) -> None:
    """Show the logs of a build's steps, kept after their pods are gone."""
    from shared.db import BuildRow, StepRow, transaction

    with _deps(ctx) as deps, transaction(deps.sessions) as session:
        if session.get(BuildRow, build_id) is None:
            raise click.ClickException(f"no build {build_id}; `jetbridge builds` lists them")
        steps = session.scalars(
            select(StepRow).where(StepRow.build_id == build_id).order_by(StepRow.id)
        ).all()
        chosen = [s for s in steps if step_name is None or s.name == step_name]
        if not chosen:
            names = ", ".join(s.name for s in steps)
            raise click.ClickException(
                f"build {build_id} has no step {step_name!r}; steps: {names}"
            )
        for step in chosen:
            click.secho(f"── {step.kind} {step.name} ({step.status})", bold=True)
            data = deps.logs.read(build_id, step.key)
            if data is None:
                click.echo("  (no log kept)")
            else:
                click.echo(data.decode("utf-8", "replace"), nl=False)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Show what would be reclaimed; change nothing.")
@pass_context
def reap(ctx: Context, dry_run: bool) -> None:
    """Run one reaper tick by hand."""
    from shared.reaper import reap as reap_once

    with _deps(ctx) as deps:
        report = reap_once(
            deps.sessions,
            store_root=deps.settings.effective_store_root,
            clock=deps.clock,
            dry_run=dry_run,
        )
    click.echo(report.summary())
    for error in report.errors:
        click.secho(f"  {error}", fg="yellow")


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_context
def db_upgrade(ctx: Context) -> None:
    """Bring the database schema to the newest migration."""
    from shared.db import current_revision, make_engine, upgrade

    engine = make_engine(ctx.settings.effective_database_url)
    upgrade(engine)
    click.echo(f"database at revision {current_revision(engine)}")


class _deps:
    """Deps for commands that only read the database and logs (no runtime, no bus)."""

    def __init__(self, ctx: Context) -> None:
        from shared.app import Deps, build_deps
        from shared.db import upgrade
        from shared.events import RecordingSink

        self.deps: Deps = build_deps(ctx.settings, sink=RecordingSink(), runtime=None)  # type: ignore[arg-type]
        upgrade(self.deps.engine)

    def __enter__(self) -> Any:
        return self.deps

    def __exit__(self, *exc: object) -> None:
        self.deps.engine.dispose()


def main() -> None:
    cli(prog_name="jetbridge")


if __name__ == "__main__":
    main()
