"""The guides say only what is true of the code.

* Every ``jetbridge …`` command in a fenced shell block of README.md, docs/*.md and the
  deployment READMEs parses with the real click group: known commands, known options,
  option values of the right type, required options given, no extra arguments. The
  command is parsed, never run: file arguments need not exist, and placeholders
  (``<pipeline>``, ``$POD``) stand for any value.
* docs/configuration.md is what ``make docs`` would write now.
* Every ``runbook_url`` of the PrometheusRule names a section of docs/monitoring.md, and
  the guide explains every metric the code exports.
* Every relative link between the docs resolves, anchors included.
* The smoke pipeline the GKE guide runs is valid.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from shared.cli import cli
from shared.metrics import Metrics, StoreCollector

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GUIDES = ("gke.md", "configuration.md", "troubleshooting.md", "monitoring.md")
CONFIGURATION = DOCS / "configuration.md"
MONITORING_DOC = DOCS / "monitoring.md"
RULES = ROOT / "deploy" / "monitoring" / "prometheusrule.yaml"
SMOKE = ROOT / "examples" / "smoke" / "pipeline.yml"
RUN_SMOKE = ("run", str(SMOKE), "--job", "smoke")


def doc_files() -> list[Path]:
    """The Markdown a user reads: the README, the guides, the deployment READMEs."""
    files = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    files += [
        ROOT / "deploy" / "chart" / "README.md",
        ROOT / "deploy" / "monitoring" / "README.md",
        ROOT / "deploy" / "README.md",
    ]
    return [f for f in files if f.exists()]


def linked_files() -> list[Path]:
    """Every doc whose links are checked: the above and the Knative manifests' README."""
    return [*doc_files(), *(f for f in [ROOT / "knative" / "README.md"] if f.exists())]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------------ shell in the docs

SHELL_BLOCKS = {"", "sh", "bash", "shell", "console", "zsh"}
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int
    """1-based line of the block's first line of content."""
    lines: tuple[str, ...]
    info: str


def fenced_blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        body = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        yield Block(path, i + 2, tuple(body), info.lower())
        i = j + 1


def _strip_comment(line: str) -> str:
    """The line without its shell comment (a ``#`` that starts a word, outside quotes)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


def shell_lines(block: Block) -> Iterator[tuple[int, str]]:
    """Each command line of a shell block with its line number: continuations joined,
    comments, prompts and heredoc bodies dropped."""
    heredoc = None
    pending: list[str] = []
    start = 0
    for offset, raw in enumerate(block.lines):
        number = block.line + offset
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        line = _strip_comment(raw)
        if not pending:
            start = number
            line = re.sub(r"^\s*\$ ", "", line)
        doc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if doc:
            heredoc = doc.group(1)
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        if _open_quote("\n".join(pending)):  # a quoted string goes on to the next line
            continue
        text = " ".join(p.strip() for p in pending).strip()
        pending = []
        if text:
            yield start, text
    if pending:
        yield start, " ".join(p.strip() for p in pending).strip()


def _open_quote(text: str) -> bool:
    """Whether ``text`` ends inside a quoted string."""
    quote = ""
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
    return bool(quote)


#: What a reader fills in: ``<pipeline>``, ``<build id>``, a shell variable, an ellipsis.
PLACEHOLDER = re.compile(r"<[^<>]+>|\$|…")
OPERATOR_CHARS = set("();<>|&")
#: Words after which the next word is still the command.
PREFIXES = {"sudo", "env", "exec", "time", "command", "nohup", "then", "do", "else", "!"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _tokens(text: str) -> list[str]:
    """Shell words and operators, with ``<placeholder>``s kept whole."""
    saved: dict[str, str] = {}

    def protect(m: re.Match[str]) -> str:
        key = f"JBPLACEHOLDER{len(saved)}X"
        saved[key] = m.group(0)
        return key

    protected = re.sub(r"<[A-Za-z0-9_ ./:@=-]+>", protect, text)
    lexer = shlex.shlex(protected, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    for i, token in enumerate(tokens):
        for key, value in saved.items():
            token = token.replace(key, value)
        tokens[i] = token
    return tokens


def _is_operator(token: str) -> bool:
    return bool(token) and set(token) <= OPERATOR_CHARS


def _is_jetbridge(word: str) -> bool:
    return word == "jetbridge" or word.endswith("/jetbridge")


def jetbridge_invocations(text: str) -> Iterator[list[str]]:
    """The arguments of each ``jetbridge`` the shell line runs (also inside ``kubectl exec``)."""
    tokens = _tokens(text)
    commands: list[list[str]] = [[]]
    for token in tokens:
        if _is_operator(token):
            commands.append([])
        else:
            commands[-1].append(token)
    for words in commands:
        yield from _invocation(words)


def _invocation(words: list[str]) -> Iterator[list[str]]:
    i = 0
    while i < len(words) and (ASSIGNMENT.match(words[i]) or words[i] in PREFIXES):
        i += 1
    if i >= len(words):
        return
    if _is_jetbridge(words[i]):
        yield words[i + 1 :]
    elif words[i].endswith("kubectl") and "--" in words[i:]:
        yield from _invocation(words[words.index("--", i) + 1 :])


@dataclass(frozen=True)
class Invocation:
    file: Path
    line: int
    text: str
    args: tuple[str, ...]
    unreadable: str | None = None
    """Why the shell line could not be split into words, if it could not."""

    @property
    def where(self) -> str:
        return f"{rel(self.file)}:{self.line}"


def invocations(files: Sequence[Path]) -> list[Invocation]:
    found = []
    for path in files:
        for block in fenced_blocks(path):
            if block.info not in SHELL_BLOCKS:
                continue
            for line, text in shell_lines(block):
                if "jetbridge" not in text:
                    continue
                try:
                    calls = list(jetbridge_invocations(text))
                except ValueError as e:  # shlex: no closing quotation
                    found.append(Invocation(path, line, text, (), unreadable=str(e)))
                    continue
                found += [Invocation(path, line, text, tuple(args)) for args in calls]
    return found


# ------------------------------------------------------------- parsing with the real group


class Lenient(click.ParamType):
    """The parameter's own type, except that a placeholder passes and files need not exist."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = inner.name
        if isinstance(inner, click.Path):
            self.inner = click.Path(
                file_okay=inner.file_okay, dir_okay=inner.dir_okay, path_type=inner.type
            )

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and PLACEHOLDER.search(value):
            return value
        return self.inner.convert(value, param, ctx)


def _lenient(command: click.Command) -> click.Command:
    """A copy of the command tree that parses as the real one and runs nothing."""
    twin = copy.copy(command)
    params = []
    for param in command.params:
        param = copy.copy(param)
        if not isinstance(param.type, click.types.BoolParamType):
            param.type = Lenient(param.type)
        params.append(param)
    twin.params = params
    twin.callback = None
    if isinstance(command, click.Group) and isinstance(twin, click.Group):
        twin.commands = {name: _lenient(sub) for name, sub in command.commands.items()}
    return twin


@cache
def _lenient_cli() -> click.Command:
    return _lenient(cli)


def parse_error(args: Sequence[str]) -> str | None:
    """Why ``jetbridge <args>`` would not parse, or ``None`` if it does (nothing runs)."""
    command = _lenient_cli()
    try:
        ctx = command.make_context("jetbridge", list(args))
        while isinstance(command, click.Group):
            rest = [*ctx._protected_args, *ctx.args]
            if not rest:
                return "no command given"
            name, sub, sub_args = command.resolve_command(ctx, rest)
            assert name is not None and sub is not None
            command = sub
            ctx = command.make_context(name, sub_args, parent=ctx)
    except click.exceptions.Exit:  # --help, --version
        return None
    except click.ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a group with nothing after it
            return "no command given"
        return e.format_message()
    return None


DOC_INVOCATIONS = invocations(doc_files())


@pytest.mark.parametrize("call", DOC_INVOCATIONS, ids=[c.where for c in DOC_INVOCATIONS])
def test_every_jetbridge_command_in_the_docs_parses(call: Invocation) -> None:
    assert call.unreadable is None, f"{call.where}: cannot read `{call.text}`: {call.unreadable}"
    error = parse_error(call.args)
    assert error is None, f"{call.where}: `{call.text}` does not parse: {error}"


def test_the_guides_show_commands_the_check_reads() -> None:
    """The extraction finds the commands it is meant to check (an empty list passes anything)."""
    by_file = {rel(c.file) for c in DOC_INVOCATIONS}
    assert {"README.md", "docs/gke.md", "docs/troubleshooting.md"} <= by_file
    commands = {c.args[0] for c in DOC_INVOCATIONS if c.args and not c.args[0].startswith("-")}
    assert {"set-pipeline", "unpause-pipeline", "trigger-job", "logs", "reap"} <= commands


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("jetbridge frobnicate", "No such command 'frobnicate'"),
        ("jetbridge run pipeline.yml", "Missing option '-j' / '--job'"),
        ("jetbridge builds --count many", "'many' is not a valid integer"),
        ("jetbridge logs 3 --stage unit", "--stage"),
        ("jetbridge validate a.yml b.yml", "unexpected extra argument (b.yml)"),
        ("jetbridge db", "no command given"),
        ("jetbridge db downgrade", "No such command 'downgrade'"),
        ("JETBRIDGE_X=1 .venv/bin/jetbridge set-pipeline -c ci.yml", "Missing option '-p'"),
        ("kubectl -n ci exec -i $POD -c function -- jetbridge reap --now", "No such option"),
    ],
)
def test_the_check_finds_commands_that_do_not_parse(line: str, error: str) -> None:
    (args,) = list(jetbridge_invocations(line))
    found = parse_error(args)
    assert found is not None and error in found, found


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("jetbridge logs <build id> --step unit", [["logs", "<build id>", "--step", "unit"]]),
        ("jetbridge builds | head -n 5", [["builds"]]),
        (
            'JETBRIDGE_WEBHOOK_SECRETS=\'{"a": "b"}\' jetbridge serve --port 8080',
            [["serve", "--port", "8080"]],
        ),
        (
            "kubectl exec -i $POD -- jetbridge set-pipeline -p smoke -c /dev/stdin -n < x.yml",
            [["set-pipeline", "-p", "smoke", "-c", "/dev/stdin", "-n"]],
        ),
        ("helm install jetbridge deploy/chart", []),
        ("for ksa in jetbridge jetbridge-trigger; do echo $ksa; done", []),
        ("make tools && .venv/bin/jetbridge reap --dry-run", [["reap", "--dry-run"]]),
    ],
)
def test_commands_are_read_from_shell_lines(line: str, expected: list[list[str]]) -> None:
    assert list(jetbridge_invocations(line)) == expected
    for args in expected:
        assert parse_error(args) is None


# ---------------------------------------------------------------- the configuration reference


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_configuration", DOCS / "generate_configuration.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_configuration_reference_is_up_to_date() -> None:
    generator = _generator()
    expected = generator.render()
    actual = CONFIGURATION.read_text() if CONFIGURATION.exists() else ""
    assert actual == expected, (
        "docs/configuration.md is stale (a setting, a chart value or a CLI flag changed): "
        "run `make docs` and commit the result"
    )


def test_the_configuration_reference_covers_every_setting_value_and_flag() -> None:
    from dataclasses import fields

    from shared.settings import Settings, env_name

    text = CONFIGURATION.read_text()
    for f in fields(Settings):
        assert f"### {env_name(f.name)}\n" in text, f"{env_name(f.name)} is not documented"
    params = re.findall(
        r"^\s*## @param (\S+) ", (ROOT / "deploy/chart/values.yaml").read_text(), re.M
    )
    for path in params:
        assert f"| `{path}` |" in text, f"Helm value {path} is not documented"
    ctx = click.Context(cli, info_name="jetbridge")
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        subs = (
            [f"{name} {s}" for s in command.list_commands(ctx)]
            if isinstance(command, click.Group)
            else [name]
        )
        for sub in subs:
            assert f"### jetbridge {sub}\n" in text, f"jetbridge {sub} is not documented"


# ------------------------------------------------------------------------ anchors and links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _without_code(path.read_text(), inline=False)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    found |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return found


def _without_code(text: str, *, inline: bool = True) -> str:
    """The Markdown with fenced blocks blanked (line numbers kept) and, with ``inline``,
    inline code removed."""
    out = []
    fence = None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(2)
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append("")
        else:
            out.append(re.sub(r"(`+).*?\1", "", line) if inline else line)
    return "\n".join(out)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.mark.parametrize("doc", linked_files(), ids=rel)
def test_relative_links_resolve(doc: Path) -> None:
    problems = []
    text = _without_code(doc.read_text())
    for m in LINK.finditer(text):  # a link's text may run over two lines
        target = m.group(1)
        number = text.count("\n", 0, m.start(1)) + 1
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            problems.append(f"{rel(doc)}:{number}: {target}: {path} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{rel(doc)}:{number}: {target}: no section #{anchor} in {rel(dest)}")
    assert not problems, "\n".join(problems)


def test_every_runbook_url_names_a_section_of_the_monitoring_guide() -> None:
    rules = yaml.safe_load(RULES.read_text())
    urls = {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for group in rules["spec"]["groups"]
        for rule in group["rules"]
        if "runbook_url" in rule.get("annotations", {})
    }
    assert urls, "the PrometheusRule has no runbook_url"
    missing = []
    for alert, url in sorted(urls.items()):
        path, _, anchor = url.partition("#")
        target = ROOT / path
        if not target.exists() or anchor not in anchors(target):
            missing.append(f"{alert}: {url}")
    assert not missing, "runbook sections missing from docs/monitoring.md: " + ", ".join(missing)


def test_the_monitoring_guide_explains_every_metric_and_alert() -> None:
    metrics = Metrics(process=False)
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    names |= {family.name for family in StoreCollector(list, None).describe()}
    text = MONITORING_DOC.read_text()
    missing = sorted(n for n in names if n.startswith("jetbridge_") and f"`{n}`" not in text)
    assert not missing, f"docs/monitoring.md does not explain: {', '.join(missing)}"
    alerts = re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M)
    assert alerts
    assert not [a for a in alerts if a not in text], "an alert is not in docs/monitoring.md"


def test_the_guides_name_no_checkout_of_their_own() -> None:
    """Nothing generated or written here carries the path of the checkout it was made in."""
    for doc in [*(DOCS / g for g in GUIDES), SMOKE]:
        assert str(ROOT) not in doc.read_text(), f"{rel(doc)} names {ROOT}"


# ------------------------------------------------------------- settings and values named


def _settings() -> set[str]:
    from dataclasses import fields

    from shared.settings import Settings

    return {f.name for f in fields(Settings)}


def _params() -> list[str]:
    return re.findall(
        r"^\s*## @param (\S+) ", (ROOT / "deploy/chart/values.yaml").read_text(), re.M
    )


def _known_value(path: str) -> bool:
    """A documented value, or a key inside a map-valued one (``webhooks.secrets.app``);
    under ``functions.settings``, the key must be a setting."""
    if path.startswith("functions.settings."):
        return path.removeprefix("functions.settings.") in _settings()
    return any(path == p or path.startswith(p + ".") for p in _params())


@pytest.mark.parametrize("guide", GUIDES, ids=str)
def test_the_guides_name_only_real_settings_and_values(guide: str) -> None:
    text = (DOCS / guide).read_text()
    env_names = {f"JETBRIDGE_{name.upper()}" for name in _settings()}
    unknown = sorted(
        {n for n in re.findall(r"\bJETBRIDGE_[A-Z0-9_]*[A-Z0-9]\b", text) if n not in env_names}
    )
    assert not unknown, f"docs/{guide} names settings that do not exist: {unknown}"
    values = re.findall(r"--set(?:-string|-json)?[ =]'?([A-Za-z0-9_.-]+)=", text)
    values += re.findall(r"\bfunctions\.settings\.[a-z0-9_]+", text)
    bad = sorted({v for v in values if not _known_value(v)})
    assert not bad, f"docs/{guide} sets Helm values the chart does not have: {bad}"


def heredocs(path: Path) -> Iterator[tuple[int, str, str]]:
    """``cat > FILE <<'EOF'`` in the shell blocks: (line, FILE, what is written)."""
    for block in fenced_blocks(path):
        if block.info not in SHELL_BLOCKS:
            continue
        lines = list(block.lines)
        for i, line in enumerate(lines):
            m = re.search(r"cat\s*>\s*(\S+)\s*<<-?\s*['\"]?(\w+)['\"]?", line)
            if m:
                end = lines.index(m.group(2), i + 1)
                yield block.line + i, m.group(1), "\n".join(lines[i + 1 : end]) + "\n"


def test_the_gke_values_install_the_objects_the_guide_names(tmp_path: Path) -> None:
    """The values file of the GKE guide passes the schema, lints, and renders the objects
    (and container names) the guide's commands use."""
    import json

    import jsonschema

    from tests.manifests import documents, run, tool

    found = [
        (line, body) for line, name, body in heredocs(DOCS / "gke.md") if name == "values-gke.yaml"
    ]
    assert len(found) == 1, "docs/gke.md writes values-gke.yaml once"
    ((line, body),) = found
    values = yaml.safe_load(body)
    schema = json.loads((ROOT / "deploy/chart/values.schema.json").read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(values)]
    assert not errors, f"docs/gke.md:{line}: values-gke.yaml: {errors}"
    path = tmp_path / "values-gke.yaml"
    path.write_text(body)
    chart = ROOT / "deploy" / "chart"
    run([tool("helm"), "lint", "--strict", chart, "-f", path])
    done = run([tool("helm"), "template", "jetbridge", chart, "--namespace", "ci", "-f", path])
    objects = {(o["kind"], o["metadata"]["name"]) for o in documents(done.stdout)}
    text = "".join((DOCS / g).read_text() for g in GUIDES)
    named = {
        ("Service", "jetbridge-step-runner"),
        ("Service", "jetbridge-trigger"),
        ("Service", "jetbridge-trigger-webhook"),
        ("Service", "jetbridge-reaper"),
        ("ServiceAccount", "jetbridge"),
        ("ServiceAccount", "jetbridge-trigger"),
        ("ServiceAccount", "jetbridge-pod-events"),
        ("PersistentVolumeClaim", "jetbridge-artifacts"),
        ("ApiServerSource", "jetbridge-pod-events"),
        ("PingSource", "jetbridge-reaper-tick"),
        ("Job", "jetbridge-db-upgrade"),
    }
    assert named <= objects, sorted(named - objects)
    for _, name in named:
        assert name in text, f"{name} is not used by the guides: drop it from this test"
    containers = {
        c["name"]
        for o in documents(done.stdout)
        for spec in _pod_specs(o)
        for c in [*spec.get("containers", []), *spec.get("initContainers", [])]
    }
    assert {"function", "db-upgrade", "cloud-sql-proxy"} <= containers


def _pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
    if template and "spec" in template:
        yield template["spec"]


# ------------------------------------------------------------------------ the smoke pipeline


def test_the_smoke_pipeline_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["validate", str(SMOKE)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_the_smoke_pipeline_runs_as_the_gke_guide_says() -> None:
    """The guide's first check, `jetbridge run examples/smoke/pipeline.yml --job smoke`,
    with the lines the guide tells the reader to look for."""
    import os
    import shutil
    import subprocess
    import tempfile

    base = ROOT / ".jetbridge-test"  # not under /tmp: a step's pod has its own /tmp
    base.mkdir(exist_ok=True)
    workspace = Path(tempfile.mkdtemp(dir=base, prefix="smoke-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETBRIDGE_")}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shared.cli", "--data-dir", str(workspace / "data"), *RUN_SMOKE],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for line in (
        "✓ task write succeeded",
        "✓ task read-left succeeded",
        "✓ task read-right succeeded",
        "✓ task amend succeeded",
        "│ amended by pod",
        "build smoke/smoke #1 (id 1) succeeded",
    ):
        assert line in out, f"{line!r} not in:\n{out}"
    if "read-only inputs are not enforced" not in out:  # bubblewrap runs the steps
        assert "the input is read-only, as it should be" in out, out
