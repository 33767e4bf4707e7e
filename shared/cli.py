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
@click.option("-j", "--job", required=True, help="The job whose pods to show.")
@click.option("-p", "--pipeline-name", help="Name the pods' labels give it. Default: file name.")
@with_vars
@pass_context
def render(
    ctx: Context,
    pipeline: Path,
    job: str,
    pipeline_name: str | None,
    var: Sequence[str],
    vars_file: Sequence[Path],
) -> None:
    """Print the pods a build of a job would create, as a YAML stream (one document a pod).

    Nothing runs and nothing is stored. Pods are built as the cluster would get them
    from this process's settings (namespace, claim, resources, placement), with
    stand-ins for what only a build has: build id 0, step ids in plan order, and
    artifacts at artifacts/0/<name>. Values of -v/--vars-file are credentials: they are
    shown as the build passes them, references into the build's Secret.
    """
    import yaml
    from kubernetes.client import ApiClient

    from shared.app import pod_settings
    from shared.logs import credentials
    from shared.plan import compile_plan
    from shared.podspec import ANNOTATION_STEP_KEY, preview_pods

    try:
        variables = _variables(var, vars_file)
        _, model = _read_pipeline(pipeline, variables)
        steps = compile_plan(model, job)
    except (PipelineError, VariableError) as e:
        _bad_pipeline(e)
    except KeyError as e:
        click.secho(f"{pipeline}: {e.args[0]}", fg="red", err=True)
        sys.exit(EXIT_BAD_PIPELINE)
    name = pipeline_name or _default_name(pipeline)
    pods = preview_pods(
        steps,
        pipeline=name,
        job=job,
        settings=pod_settings(ctx.settings),
        credentials=credentials(variables),
    )
    by_key = {s.key: s for s in steps}
    client = ApiClient()
    for pod in pods:
        data = client.sanitize_for_serialization(pod)  # type: ignore[no-untyped-call]
        step = by_key[data["metadata"]["annotations"][ANNOTATION_STEP_KEY]]
        click.echo(f"---\n# {step.kind} {step.name} (step {step.key})")
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


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
            _why_nothing_ran(ci, build)
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
                attempts = int((step.spec or {}).get("attempts", 1))
                attempt = data.get("attempt", step.attempt)
                more = f" (attempt {attempt} of {attempts})" if attempts > 1 else ""
                click.echo(f"▶ {step.kind} {step.name}{more}")
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
@click.option(
    "-w", "--watch", is_flag=True, help="Keep showing builds as they come and end (Ctrl-C stops)."
)
@click.option(
    "--until-idle", is_flag=True, help="With --watch: stop once no build is pending or running."
)
@click.option(
    "--interval", default=1.0, show_default=True, help="With --watch: seconds between looks."
)
@click.option(
    "--checks", is_flag=True, help="Show resource checks too (`<pipeline>/check:<resource>`)."
)
@pass_context
def builds(
    ctx: Context, count: int, watch: bool, until_idle: bool, interval: float, checks: bool
) -> None:
    """List recent builds, newest first; with --watch, oldest first and then as they change.

    Resource checks are builds too, of `check:<resource>`; --checks shows them.
    """
    import time

    from shared.builds import BuildView, recent_builds, watch_builds
    from shared.db import transaction

    def show(build: BuildView) -> None:
        started = build.started_at.strftime("%Y-%m-%d %H:%M:%S") if build.started_at else "-"
        duration = (
            f"{(build.finished_at - build.started_at).total_seconds():.1f}s"
            if build.finished_at and build.started_at
            else "-"
        )
        click.secho(
            f"{build.id:>5}  {build.label:<32} {build.status:<10} {started:<20} {duration}",
            fg=COLOURS.get(build.status),
        )

    header = f"{'id':>5}  {'build':<32} {'status':<10} {'started':<20} duration"
    with _deps(ctx) as deps:
        if watch:
            click.echo(header)
            try:
                for view in watch_builds(
                    deps.sessions,
                    count=count,
                    interval=interval,
                    sleep=time.sleep,
                    until_idle=until_idle,
                    checks=checks,
                ):
                    show(view)
            except KeyboardInterrupt:
                pass
            return
        with transaction(deps.sessions) as session:
            rows = recent_builds(session, limit=count, checks=checks)
        if not rows:
            click.echo("no builds yet")
            return
        click.echo(header)
        for view in rows:
            show(view)


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
    """Run one reaper tick by hand and print its report.

    With JETBRIDGE_RUNTIME=kubernetes it reads and deletes pods in the cluster and
    announces through K_SINK / JETBRIDGE_EVENT_SINK; here it reclaims the store.
    """
    from shared.reaper import reap as reap_once

    with _deps(ctx) as deps:
        runtime, sink = _cluster(deps.settings)
        report = reap_once(
            deps.sessions,
            store_root=deps.settings.effective_store_root,
            clock=deps.clock,
            settings=deps.settings,
            runtime=runtime,
            logs=deps.logs if runtime is not None else None,
            sink=sink,
            dry_run=dry_run,
        )
    click.echo(("dry run, nothing changed: " if dry_run else "") + report.summary())
    for line in report.lines():
        click.echo(f"  {line}")
    for error in report.errors:
        click.secho(f"  error: {error}", fg="yellow")
    if report.errors_dropped:
        click.secho(f"  … and {report.errors_dropped} more error(s)", fg="yellow")
    sys.exit(EXIT_ERROR if report.error_count else EXIT_OK)


@cli.command("abort-build")
@click.argument("build_id", type=int)
@click.option(
    "--reason", default="aborted by a user", show_default=True, help="Why, for the record."
)
@pass_context
def abort_build(ctx: Context, build_id: int, reason: str) -> None:
    """Abort a build: its steps stop, its pods are deleted, its artifacts are reaped."""
    from shared.builds import abort_build as abort
    from shared.errors import NotFoundError

    with _deps(ctx) as deps:
        runtime, sink = _cluster(deps.settings)
        try:
            result = abort(
                deps.sessions,
                build_id=build_id,
                runtime=runtime,
                logs=deps.logs,
                sink=sink or deps.sink,
                clock=deps.clock,
                reason=reason,
            )
        except NotFoundError:
            raise click.ClickException(
                f"no build {build_id}; `jetbridge builds` lists them"
            ) from None
    if not result.aborted:
        if result.status in st.BUILD_TERMINAL:
            click.echo(f"build {build_id} had already {result.status}: nothing to abort")
        else:
            click.echo(f"build {build_id} is running its ensure/on_abort hooks: nothing to abort")
        return
    stopped = ", ".join(result.steps) or "no step was running"
    if result.status == st.ABORTED:
        click.secho(f"build {build_id} aborted ({stopped})", fg=COLOURS[st.ABORTED])
    else:
        click.secho(
            f"build {build_id} aborting ({stopped}); its ensure/on_abort hooks run first",
            fg=COLOURS[st.ABORTED],
        )
    if result.pods_left:
        click.echo(f"pods the reaper deletes on its next tick: {', '.join(result.pods_left)}")


def _cluster(settings: Settings) -> tuple[Any, Any]:
    """The runtime and event sink a one-off command acts through, if any.

    In the cluster (``JETBRIDGE_RUNTIME=kubernetes``), the pods' API and the Broker.
    Locally neither: the pods belong to the ``jetbridge run`` or ``serve`` that
    started them, and their ticks do the rest.
    """
    from shared.events import HttpSink

    runtime = None
    if settings.runtime == "kubernetes":
        from shared.runtime.kubernetes import KubernetesRuntime

        runtime = KubernetesRuntime.from_settings(settings)
    sink = HttpSink(settings.event_sink) if settings.event_sink else None
    return runtime, sink


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


# ---------------------------------------------------------------- the pipeline registry


def _registry_error(e: JetBridgeError) -> None:
    click.secho(f"error: {e}", fg="red", err=True)
    sys.exit(EXIT_BAD_PIPELINE if isinstance(e, PermanentError) else EXIT_ERROR)


@cli.command("set-pipeline")
@click.option("-p", "--pipeline", "name", required=True, help="Name to keep the pipeline under.")
@click.option(
    "-c",
    "--config",
    "config",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The pipeline's YAML file.",
)
@with_vars
@click.option("-n", "--non-interactive", is_flag=True, help="Save without asking.")
@pass_context
def set_pipeline(
    ctx: Context,
    name: str,
    config: Path,
    var: Sequence[str],
    vars_file: Sequence[Path],
    non_interactive: bool,
) -> None:
    """Store a pipeline: validate it, show how it differs from the stored one, ask, save.

    A new pipeline starts paused, as with Concourse's fly: `unpause-pipeline` lets it build.
    """
    from shared.db import transaction
    from shared.pipelines import change_of, check_name, save_pipeline

    try:
        check_name(name)
        variables = _variables(var, vars_file)
        text, _ = _read_pipeline(config, variables)
    except (PipelineError, VariableError) as e:
        _bad_pipeline(e)
    try:
        with _deps(ctx) as deps:
            with transaction(deps.sessions) as session:
                change = change_of(session, name=name, config=text, variables=variables)
            if change.unchanged:
                click.echo(f"pipeline {name!r} is unchanged")
                return
            for line in change.diff:
                colour = {"+": "green", "-": "red", "@": "cyan"}.get(line[:1])
                click.secho(line, fg=colour, nl=False)
            for what in change.variables:
                click.echo(f"variable {what}")
            if not non_interactive:
                click.confirm("apply this configuration?", abort=True)
            with transaction(deps.sessions) as session:
                row = save_pipeline(
                    session,
                    name=name,
                    config=text,
                    variables=variables,
                    clock=deps.clock,
                    paused_if_new=True,
                )
                paused = row.paused
    except JetBridgeError as e:
        _registry_error(e)
    if change.created:
        click.echo(
            f"pipeline {name!r} created, paused: `jetbridge unpause-pipeline {name}` lets it build"
        )
    else:
        click.echo(f"pipeline {name!r} updated" + (" (it is paused)" if paused else ""))


@cli.command("pipelines")
@pass_context
def pipelines_(ctx: Context) -> None:
    """List the stored pipelines: paused or not, their jobs, how their newest build went."""
    from shared.db import transaction
    from shared.pipelines import summaries

    with _deps(ctx) as deps, transaction(deps.sessions) as session:
        rows = summaries(session)
    if not rows:
        click.echo("no pipelines yet; `jetbridge set-pipeline -p NAME -c FILE` stores one")
        return
    click.echo(f"{'name':<24} {'paused':<7} {'builds':>6}  {'last':<10} jobs")
    for row in rows:
        last = row.last_status or "-"
        click.secho(
            f"{row.name:<24} {'yes' if row.paused else 'no':<7} {row.builds:>6}  {last:<10} "
            + ", ".join(row.jobs),
            fg=COLOURS.get(last),
        )


def _set_paused(ctx: Context, name: str, *, paused: bool) -> None:
    from shared.db import transaction
    from shared.pipelines import set_paused

    try:
        with _deps(ctx) as deps, transaction(deps.sessions) as session:
            changed = set_paused(session, name, paused=paused)
    except JetBridgeError as e:
        _registry_error(e)
    word = "paused" if paused else "unpaused"
    click.echo(f"{word} {name!r}" if changed else f"{name!r} was {word} already")


@cli.command("pause-pipeline")
@click.argument("name")
@pass_context
def pause_pipeline(ctx: Context, name: str) -> None:
    """Start no new builds of NAME (webhooks and requests are refused) until it is unpaused."""
    _set_paused(ctx, name, paused=True)


@cli.command("unpause-pipeline")
@click.argument("name")
@pass_context
def unpause_pipeline(ctx: Context, name: str) -> None:
    """Let NAME start builds again."""
    _set_paused(ctx, name, paused=False)


@cli.command("destroy-pipeline")
@click.argument("name")
@click.option("-n", "--non-interactive", is_flag=True, help="Destroy without asking.")
@pass_context
def destroy_pipeline(ctx: Context, name: str, non_interactive: bool) -> None:
    """Remove NAME with its builds and their history; its artifacts go at the reaper's next tick."""
    from shared.db import transaction
    from shared.pipelines import destroy_pipeline as destroy
    from shared.pipelines import find_pipeline

    try:
        with _deps(ctx) as deps:
            with transaction(deps.sessions) as session:
                find_pipeline(session, name)
            if not non_interactive:
                click.confirm(
                    f"destroy pipeline {name!r} with all its builds? This cannot be undone",
                    abort=True,
                )
            with transaction(deps.sessions) as session:
                gone = destroy(session, name)
    except JetBridgeError as e:
        _registry_error(e)
    running = f", {gone.running} of them not finished" if gone.running else ""
    click.echo(
        f"destroyed {name!r}: {gone.builds} build(s){running}; "
        f"{gone.orphaned_artifacts} artifact(s) left for the reaper"
    )


@cli.command("trigger-job")
@click.argument("target", metavar="PIPELINE/JOB")
@click.option("-w", "--watch", is_flag=True, help="Follow the build to its end, with step logs.")
@click.option(
    "--sink",
    metavar="URL",
    help="Send the request to this trigger (`jetbridge serve`'s /trigger, or the Broker). "
    "Default: JETBRIDGE_EVENT_SINK; with none, the build runs here.",
)
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait for the build.")
@pass_context
def trigger_job(ctx: Context, target: str, watch: bool, sink: str | None, timeout: float) -> None:
    """Start a build of PIPELINE/JOB: a `dev.jetbridge.build.requested` event.

    With a sink, the event goes there and the build is shown once recorded (--watch
    follows it). With none, the in-process bus takes it and the build runs here to its
    end, as `run` does, but from the stored pipeline.
    """
    pipeline, _, job = target.partition("/")
    if not pipeline or not job:
        raise click.UsageError(f"expected PIPELINE/JOB, found {target!r}")
    url = sink or ctx.settings.event_sink
    try:
        status = (
            _trigger_remote(ctx, url, pipeline, job, watch=watch, timeout=timeout)
            if url
            else _trigger_here(ctx, pipeline, job, watch=watch, timeout=timeout)
        )
    except JetBridgeError as e:
        _registry_error(e)
    if status is None:
        sys.exit(EXIT_OK)
    sys.exit(EXIT_OK if status == st.SUCCEEDED else EXIT_BUILD_FAILED)


@cli.command("check-resource")
@click.argument("target", metavar="PIPELINE/RESOURCE")
@click.option(
    "--sink",
    metavar="URL",
    help="Send the request to this trigger (`jetbridge serve`'s /trigger, or the Broker). "
    "Default: JETBRIDGE_EVENT_SINK; with none, the check runs here.",
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for the check.")
@pass_context
def check_resource(ctx: Context, target: str, sink: str | None, timeout: float) -> None:
    """Check PIPELINE/RESOURCE now: run its type's `check` and keep the versions it finds.

    The check is a build of `check:RESOURCE` (a `dev.jetbridge.build.requested` event).
    With a sink, JetBridge there runs it, and the versions it finds trigger builds there.
    With none it runs here, to its end, and the newest versions are shown; builds they
    trigger start under `jetbridge serve` (here, `trigger-job` runs a job by hand).
    """
    from shared.checks import check_job

    pipeline, _, resource = target.partition("/")
    if not pipeline or not resource:
        raise click.UsageError(f"expected PIPELINE/RESOURCE, found {target!r}")
    job = check_job(resource)
    url = sink or ctx.settings.event_sink
    try:
        status = (
            _trigger_remote(ctx, url, pipeline, job, watch=True, timeout=timeout)
            if url
            else _trigger_here(ctx, pipeline, job, watch=True, timeout=timeout)
        )
        _show_versions(ctx, pipeline, resource)
    except JetBridgeError as e:
        _registry_error(e)
    sys.exit(EXIT_OK if status == st.SUCCEEDED else EXIT_BUILD_FAILED)


#: Versions ``check-resource`` shows, newest first.
SHOWN_VERSIONS = 5


def _show_versions(ctx: Context, pipeline: str, resource: str) -> None:
    from shared.db import transaction
    from shared.pipelines import find_pipeline, load
    from shared.versions import versions_of

    with _deps(ctx) as deps, transaction(deps.sessions) as session:
        row = find_pipeline(session, pipeline)
        try:
            model = load(row).resource(resource)
        except KeyError:
            return  # the check said so already
        rows = versions_of(session, pipeline_id=row.id, resource=model, limit=SHOWN_VERSIONS)
    if not rows:
        click.echo(f"{pipeline}/{resource} has no versions yet")
        return
    click.echo(f"newest versions of {pipeline}/{resource}:")
    for version in rows:
        fields = ", ".join(f"{k}: {v}" for k, v in version.version.items())
        click.echo(
            f"  {fields}  ({version.origin}, first seen {version.first_seen:%Y-%m-%d %H:%M:%S})"
        )


def _build_line(build: Any, pipeline: str) -> None:
    click.secho(
        f"build {pipeline}/{build.job_name} #{build.number} (id {build.id}) {build.status}",
        fg=COLOURS.get(build.status),
        bold=build.status in st.BUILD_TERMINAL,
    )


def _trigger_here(ctx: Context, pipeline: str, job: str, *, watch: bool, timeout: float) -> str:
    from shared.local import LocalCI

    with LocalCI(ctx.settings) as ci:
        shown: list[str] = []

        def started(event: CloudEvent) -> None:
            if event["type"] == events.BUILD_REQUESTED and not shown:
                build = ci.build_for(pipeline, event["id"])
                if build is not None:
                    shown.append(event["id"])
                    _build_line(build, pipeline)
            else:
                _progress(event, ci, quiet=not watch)

        ci.bus.observe(started)
        build = ci.run_build(pipeline, job, timeout=timeout)
        _build_line(build, pipeline)
        _why_nothing_ran(ci, build)
        return build.status


def _why_nothing_ran(ci: Any, build: Any) -> None:
    """A build that errored before any step (a get with ``passed:`` that nothing passed yet)
    says why: no step line did."""
    from shared.db import StepRow, transaction

    if build.status != st.ERRORED or not build.error:
        return
    with transaction(ci.deps.sessions) as session:
        step = session.scalar(select(StepRow.id).where(StepRow.build_id == build.id).limit(1))
    if step is None:
        click.secho(f"! {build.error}", fg=COLOURS[st.ERRORED])


def _trigger_remote(
    ctx: Context, url: str, pipeline: str, job: str, *, watch: bool, timeout: float
) -> str | None:
    import json
    import time
    import urllib.error
    import urllib.request

    from cloudevents.conversion import to_binary

    from shared.db import BuildRow, PipelineRow, StepRow, transaction
    from shared.errors import EventError, NotFoundError, PipelinePaused, TemporaryError

    event = events.make_event(
        events.BUILD_REQUESTED, {"pipeline": pipeline, "job": job, "versions": {}}
    )
    headers, body = to_binary(event)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error") or e.reason
        except ValueError:
            message = e.reason
        kinds = {404: NotFoundError, 409: PipelinePaused}
        raise (kinds.get(e.code, EventError) if e.code < 500 else TemporaryError)(
            f"{url} answered {e.code}: {message}"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        raise TemporaryError(f"could not send the build request to {url}: {e}") from None
    deadline = time.monotonic() + timeout
    seen: dict[int, str] = {}
    with _deps(ctx) as deps:
        build = None
        while True:
            with transaction(deps.sessions) as session:
                build = session.scalars(
                    select(BuildRow)
                    .join(PipelineRow, PipelineRow.id == BuildRow.pipeline_id)
                    .where(PipelineRow.name == pipeline, BuildRow.event_id == event["id"])
                ).one_or_none()
                steps = (
                    session.scalars(
                        select(StepRow).where(StepRow.build_id == build.id).order_by(StepRow.id)
                    ).all()
                    if build is not None and watch
                    else []
                )
            if build is not None and not seen:
                _build_line(build, pipeline)
                seen[0] = build.status
                if not watch:
                    return None
            for step in steps:
                if step.kind != "check" and seen.get(step.id) != step.status:
                    seen[step.id] = step.status
                    if step.status in st.STEP_TERMINAL:
                        line = (
                            f"{SYMBOLS.get(step.status, '?')} {step.kind} {step.name} {step.status}"
                        )
                        click.secho(
                            line + (f": {step.error}" if step.error else ""),
                            fg=COLOURS.get(step.status),
                        )
                    elif step.status == st.RUNNING:
                        click.echo(f"▶ {step.kind} {step.name}")
            if build is not None and build.status in st.BUILD_TERMINAL:
                _build_line(build, pipeline)
                return build.status
            if time.monotonic() > deadline:
                raise TemporaryError(f"no build of {pipeline}/{job} finished within {timeout:.0f}s")
            time.sleep(0.2)  # a human is watching: five looks a second are plenty


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, help="Port to listen on (0: any free one)."
)
@click.option(
    "--reaper-interval",
    type=float,
    help="Seconds between reaper ticks. Default: JETBRIDGE_REAPER_INTERVAL_SECONDS (60).",
)
@pass_context
def serve(ctx: Context, host: str, port: int, reaper_interval: float | None) -> None:
    """Serve the three functions on one port, with the local runtime: webhook-driven CI here.

    POST webhooks to /webhooks/<pipeline>; CloudEvents go to /trigger, /step-runner and
    /reaper. `jetbridge builds --watch` shows the builds as they come. Ctrl-C stops.
    """
    from shared.server import Server

    try:
        server = Server(ctx.settings, host=host, port=port, reaper_interval=reaper_interval)
    except OSError as e:
        click.secho(f"error: cannot listen on {host}:{port}: {e.strerror}", fg="red", err=True)
        sys.exit(EXIT_ERROR)
    if host not in ("127.0.0.1", "::1", "localhost"):
        click.secho(
            "warning: /trigger, /step-runner and /reaper take unsigned CloudEvents: anyone "
            "who reaches this port can start builds",
            fg="yellow",
            err=True,
        )
    click.echo(
        f"JetBridge serving on {server.url}: webhooks at /webhooks/<pipeline>, "
        "CloudEvents at /trigger, /step-runner, /reaper (Ctrl-C stops)"
    )
    server.serve_forever()


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
