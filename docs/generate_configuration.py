"""Write docs/configuration.md from the code: settings, the chart's values, the CLI.

    python docs/generate_configuration.py           # rewrite docs/configuration.md
    python docs/generate_configuration.py --check   # exit 1 if it is stale

`make docs` runs the first. Nothing in the reference is written by hand:

* **environment variables**: every field of ``shared.settings.Settings``: its
  docstring (read from the source), type, default, what ``load_settings`` refuses
  (found by handing it bad values and quoting its message), the Helm value that sets
  it (read from the chart's templates), and an example that ``load_settings`` accepts;
* **Helm values**: every ``## @param`` of ``deploy/chart/values.yaml`` with its
  section, default, the schema's constraints (``values.schema.json``) and a ``--set``
  example the schema accepts;
* **the command**: every command of the ``jetbridge`` click group, with its usage,
  help, arguments and options (defaults, environment variables, repeatable, required).

``tests/test_docs.py`` renders this in memory and fails when the committed file differs.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, fields
from pathlib import Path
from typing import Any

import click
import jsonschema  # type: ignore[import-untyped]
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from shared import cli as cli_module  # noqa: E402
from shared import settings as settings_module  # noqa: E402
from shared.errors import JetBridgeError  # noqa: E402
from shared.settings import Settings, env_name, load_settings  # noqa: E402

OUTPUT = ROOT / "docs" / "configuration.md"
CHART = ROOT / "deploy" / "chart"
COMMAND = "make docs"


class GenerationError(Exception):
    """The code cannot be documented as it is: a setting with no docstring, a bad example."""


# ------------------------------------------------------------------------------- examples

#: Examples where the docstring offers none fit to copy. Each is checked: a setting's
#: example must load (``load_settings``), a value's must pass the chart's schema. A
#: setting or value not listed gets one derived from its type and default.
SETTING_EXAMPLES: Mapping[str, Mapping[str, str]] = {
    "data_dir": {"JETBRIDGE_DATA_DIR": "/var/lib/jetbridge"},
    "database_url": {
        "JETBRIDGE_DATABASE_URL": "postgresql+pg8000://jetbridge:s3cret@127.0.0.1:5432/jetbridge"
    },
    "store_root": {"JETBRIDGE_STORE_ROOT": "/var/lib/jetbridge/store"},
    "store_claim": {"JETBRIDGE_STORE_CLAIM": "jetbridge-artifacts"},
    "log_dir": {"JETBRIDGE_LOG_DIR": "/var/lib/jetbridge/store/logs"},
    "runtime": {"JETBRIDGE_RUNTIME": "kubernetes"},
    "namespace": {"JETBRIDGE_NAMESPACE": "ci"},
    "workdir": {"JETBRIDGE_WORKDIR": "/tmp/build"},
    "resource_image": {
        "JETBRIDGE_RESOURCE_IMAGE": "europe-west1-docker.pkg.dev/my-project/ci/jetbridge:0.1.0"
    },
    "step_requests": {"JETBRIDGE_STEP_REQUESTS": '{"cpu": "500m", "memory": "512Mi"}'},
    "step_limits": {"JETBRIDGE_STEP_LIMITS": '{"memory": "4Gi"}'},
    "image_pull_secrets": {"JETBRIDGE_IMAGE_PULL_SECRETS": '["registry-credentials"]'},
    "tolerations": {
        "JETBRIDGE_TOLERATIONS": (
            '[{"key": "ci", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]'
        )
    },
    "log_store": {
        "JETBRIDGE_LOG_STORE": "gcs",
        "JETBRIDGE_LOG_BUCKET": "my-project-jetbridge-logs",
    },
    "log_bucket": {
        "JETBRIDGE_LOG_STORE": "gcs",
        "JETBRIDGE_LOG_BUCKET": "my-project-jetbridge-logs",
    },
    "log_prefix": {"JETBRIDGE_LOG_PREFIX": "ci"},
    "event_sink": {
        "JETBRIDGE_EVENT_SINK": "http://broker-ingress.knative-eventing.svc.cluster.local/ci/jetbridge"
    },
    "webhook_secrets": {"JETBRIDGE_WEBHOOK_SECRETS": '{"app": "s3cret"}'},
    "webhook_secrets_dir": {"JETBRIDGE_WEBHOOK_SECRETS_DIR": "/etc/jetbridge/webhook-secrets"},
    "store_min_free_bytes": {"JETBRIDGE_STORE_MIN_FREE_BYTES": "53687091200"},
    "log_format": {"JETBRIDGE_LOG_FORMAT": "json"},
    "log_level": {"JETBRIDGE_LOG_LEVEL": "DEBUG"},
}

VALUE_EXAMPLES: Mapping[str, Any] = {
    "nameOverride": "ci",
    "fullnameOverride": "jetbridge",
    "commonLabels": {"team": "platform"},
    "image.repository": "europe-west1-docker.pkg.dev/my-project/ci/jetbridge",
    "image.tag": "0.1.0",
    "image.digest": "sha256:" + "0" * 64,
    "image.pullSecrets": ["registry-credentials"],
    "functions.podSecurityContext": {"fsGroup": 65532},
    "functions.annotations": {"autoscaling.knative.dev/target": "5"},
    "functions.settings": {"build_timeout_seconds": 7200},
    "functions.trigger.resources": {"requests": {"cpu": "200m", "memory": "256Mi"}},
    "functions.webhook.resources": {"requests": {"cpu": "200m", "memory": "256Mi"}},
    "functions.stepRunner.resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
    "functions.reaper.minScale": 0,
    "functions.reaper.resources": {"limits": {"memory": "1Gi"}},
    "steps.resourceImage": "europe-west1-docker.pkg.dev/my-project/ci/jetbridge:0.1.0",
    "steps.requests": {"cpu": "500m", "memory": "512Mi"},
    "steps.limits": {"memory": "4Gi"},
    "steps.nodeSelector": {"cloud.google.com/gke-nodepool": "ci"},
    "steps.tolerations": [
        {"key": "ci", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ],
    "steps.imagePullSecrets": ["registry-credentials"],
    "store.existingClaim": "ci-artifacts",
    "store.storageClass": "standard-rwx",
    "store.size": "1Ti",
    "logs.bucket": "my-project-jetbridge-logs",
    "logs.prefix": "ci",
    "eventing.broker.name": "default",
    "eventing.broker.class": "MTChannelBasedBroker",
    "eventing.broker.backoffDelay": "PT1S",
    "eventing.brokerUrl": "http://broker-ingress.knative-eventing.svc.cluster.local/ci/default",
    "eventing.reaperSchedule": "*/10 * * * *",
    "postgresql.image.repository": "docker.io/library/postgres",
    "postgresql.image.tag": "17-bookworm",
    "postgresql.auth.username": "ci",
    "postgresql.auth.database": "ci",
    "postgresql.auth.password": "change-me",
    "postgresql.auth.existingSecret": "jetbridge-postgres",
    "postgresql.auth.secretKey": "password",
    "postgresql.persistence.size": "20Gi",
    "postgresql.persistence.storageClass": "premium-rwo",
    "postgresql.resources": {"limits": {"memory": "2Gi"}},
    "externalDatabase.url": "postgresql+pg8000://jetbridge:s3cret@10.20.0.3:5432/jetbridge",
    "externalDatabase.existingSecret": "jetbridge-database",
    "externalDatabase.existingSecretKey": "url",
    "externalDatabase.cloudSqlProxy.instanceConnectionName": "my-project:europe-west1:jetbridge",
    "externalDatabase.cloudSqlProxy.image": "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.14.1",
    "externalDatabase.cloudSqlProxy.resources": {"limits": {"memory": "512Mi"}},
    "migrations.resources": {"limits": {"memory": "512Mi"}},
    "webhooks.secrets": {"app": "change-me"},
    "webhooks.existingSecret": "jetbridge-webhooks",
    "ingress.host": "ci.example.com",
    "ingress.className": "nginx",
    "ingress.annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
    "ingress.tlsSecret": "ci-example-com-tls",
    "serviceAccount.name": "jetbridge",
    "serviceAccount.annotations": {
        "iam.gke.io/gcp-service-account": "jetbridge@my-project.iam.gserviceaccount.com"
    },
    "monitoring.labels": {"release": "prometheus"},
    "monitoring.podMonitor.interval": "1m",
    "monitoring.dashboard.namespace": "monitoring",
    "monitoring.dashboard.label": "dashboards",
    "monitoring.dashboard.labelValue": "jetbridge",
    "monitoring.dashboard.annotations": {"grafana_folder": "CI"},
}


# ------------------------------------------------------------------- environment variables

#: What a setting's Python type means for the variable that sets it.
TYPE_NAMES = {
    "int": "whole number",
    "str": "string",
    "Path": "path",
    "Path | None": "path",
    "Mapping[str, str]": "JSON object of strings",
    "tuple[str, ...]": "JSON list of strings",
    "tuple[Mapping[str, Any], ...]": "JSON list of objects",
}

#: Bad values handed to ``load_settings`` to find what it refuses, by type. A refusal is
#: quoted as the user would see it; a value it takes tells nothing and is dropped. (A
#: value of the wrong type at all, like ``x`` for a number, is covered by the type.)
PROBES: Mapping[str, tuple[str, ...]] = {
    "int": ("-1",),
    "str": ("?",),
    "Mapping[str, str]": ('{"memory": "lots"}', '{"memory": "1Ei"}'),
    "tuple[Mapping[str, Any], ...]": ('[{"colour": "red"}]',),
}


@dataclass(frozen=True)
class Variable:
    field: str
    name: str
    type: str
    default: str
    doc: str
    checks: tuple[str, ...]
    chart: ChartSource | None
    example: Mapping[str, str]


def field_docs() -> dict[str, str]:
    """Each ``Settings`` field's docstring: the string literal right after it in the class body."""
    tree = ast.parse(inspect.getsource(settings_module))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    docs: dict[str, str] = {}
    body = cls.body
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            text = inspect.cleandoc(after.value.value)
            text = re.sub(r"(?<=\w)-\n\s*(?=\w)", "-", text)  # a word wrapped at its hyphen
            docs[node.target.id] = " ".join(text.split())
    return docs


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise ValueError(f"setting {f.name} has no default")


def env_text(value: Any) -> str:
    """A setting's value as its environment variable would hold it."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return json.dumps(dict(value))
    if isinstance(value, tuple | list):
        return json.dumps(list(value))
    return str(value)


def _loads(env: Mapping[str, str]) -> str | None:
    """``None`` if ``load_settings`` takes these variables, else its message."""
    try:
        load_settings(env)
    except JetBridgeError as e:
        return str(e)
    return None


def _literals(doc: str) -> list[str]:
    """The ``code`` spans of a docstring, in order."""
    return re.findall(r"``(.+?)``", doc)


def _checks(f: Field[Any], doc: str) -> list[str]:
    """What ``load_settings`` refuses for this setting, in its own words."""
    name = env_name(f.name)
    type_ = str(f.type)
    probes = list(PROBES.get(type_, ()))
    if type_ == "str":  # the values the docstring names, one of which may need another setting
        probes += [v for v in _literals(doc) if re.fullmatch(r"[\w.-]+", v)]
    checks: list[str] = []
    for probe in probes:
        message = _loads({name: probe})
        if message is None:
            continue
        prefix = name + " must "
        if message.startswith(prefix):
            rule = "must " + message[len(prefix) :].split(", found ")[0]
            text = f"{rule[0].upper()}{rule[1:]}."
        else:
            text = f"`{name}={_shell_quote(probe)}` is refused: {_code(message)}"
        if text not in checks:
            checks.append(text)
    return checks


def _shell_quote(value: str) -> str:
    return (
        value if re.fullmatch(r"[\w./:@%+=,-]+", value) else "'" + value.replace("'", "'\\''") + "'"
    )


def _code(text: str) -> str:
    """Inline code, with enough backticks for text that holds some."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _example(f: Field[Any], doc: str, default: Any) -> dict[str, str]:
    name = env_name(f.name)
    if f.name in SETTING_EXAMPLES:
        return dict(SETTING_EXAMPLES[f.name])
    type_ = str(f.type)
    candidates: list[str] = []
    if type_ in ("str", "Mapping[str, str]", "tuple[str, ...]"):
        candidates += [v for v in _literals(doc) if "<" not in v and "…" not in v]
    if type_ == "int":
        if f.name.endswith("_percent"):
            candidates.append("20")
        elif f.name.endswith("_seconds"):
            candidates.append(str(default * 2 if default else 3600))
        else:
            candidates.append(str(default * 2 if default else 1))
    for candidate in candidates:
        if candidate != env_text(default) and _loads({name: candidate}) is None:
            return {name: candidate}
    return {}


#: Values that only shape object names: every name depends on them, none is a setting.
NAMING_VALUES = frozenset({"nameOverride", "fullnameOverride"})

#: Where the templates build a variable in ways a reading of them cannot tell.
CHART_OVERRIDES: Mapping[str, str] = {
    "JETBRIDGE_DATABASE_URL": (
        "`postgresql.*` (built from the bundled Postgres' user, password and database) or "
        "`externalDatabase.*` (a Secret holding the URL)"
    ),
}


@dataclass(frozen=True)
class ChartSource:
    cell: str
    """For the table: `steps.requests`, always `kubernetes`, the release's namespace."""
    sentence: str
    """For the variable's section, a whole sentence."""


def chart_sources() -> dict[str, ChartSource]:
    """Environment variable → how the chart sets it, read from the templates."""
    helpers: dict[str, str] = {}
    texts = []
    for path in sorted((CHART / "templates").iterdir()):
        if path.suffix in (".yaml", ".tpl"):
            text = path.read_text()
            texts.append(text)
            # A helper's body runs to the next define (its own {{ end }}s nest).
            pieces = re.split(r'{{-?\s*define\s+"([^"]+)"', text)
            for name, body in zip(pieces[1::2], pieces[2::2], strict=True):
                helpers[name] = body
    blocks: dict[str, list[str]] = {}
    for text in texts:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^(\s*)- name: (JETBRIDGE_[A-Z0-9_]+)\s*$", line)
            if not m:
                continue
            indent = len(m.group(1))
            block = []
            for nxt in lines[i + 1 :]:
                if not nxt.strip() or len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                block.append(nxt.strip())
            blocks.setdefault(m.group(2), []).append("\n".join(block))
    found = {name: _describe_source(name, parts, helpers) for name, parts in blocks.items()}
    if "functions.settings" in _param_paths():
        for f in fields(Settings):
            name = env_name(f.name)
            if name not in found:
                value = f"functions.settings.{f.name}"
                found[name] = ChartSource(
                    f"`{value}`", f"The chart leaves it at its default; `{value}` sets it."
                )
    return found


def _values_refs(expression: str, helpers: Mapping[str, str], depth: int = 0) -> list[str]:
    refs = re.findall(r"(?:\.Values|\$v)\.([A-Za-z0-9_.]+)", expression)
    if depth < 3:
        for helper in re.findall(r'include\s+"([^"]+)"', expression):
            refs += _values_refs(helpers.get(helper, ""), helpers, depth + 1)
    unique: list[str] = []
    for ref in refs:
        ref = ref.rstrip(".")
        if ref not in unique and ref not in NAMING_VALUES:
            unique.append(ref)
    return unique


def _describe_source(name: str, blocks: list[str], helpers: Mapping[str, str]) -> ChartSource:
    if name in CHART_OVERRIDES:
        return ChartSource(CHART_OVERRIDES[name], f"Set by the chart from {CHART_OVERRIDES[name]}.")
    refs: list[str] = []
    for block in blocks:
        refs += [r for r in _values_refs(block, helpers) if r not in refs]
    if refs:
        listed = ", ".join(f"`{r}`" for r in refs)
        return ChartSource(listed, f"Set by the chart from {listed}.")
    text = "\n".join(blocks)
    if "Release.Namespace" in text:
        return ChartSource(
            "the release's namespace", "Set by the chart to the release's namespace."
        )
    literals = {m.strip('"') for m in re.findall(r"^value: ([^{}\s]+)$", text, re.M)}
    if len(literals) == 1:
        (literal,) = literals
        return ChartSource(f"`{literal}` (fixed)", f"Set by the chart to `{literal}`.")
    return ChartSource("set by the chart", "Set by the chart.")


def variables() -> list[Variable]:
    docs = field_docs()
    chart = chart_sources()
    out = []
    for f in fields(Settings):
        name = env_name(f.name)
        if f.name not in docs:
            raise GenerationError(
                f"shared/settings.py: setting {f.name} has no docstring to document it"
            )
        doc = docs[f.name]
        default = _default(f)
        example = _example(f, doc, default)
        problem = _loads(example) if example else None
        if problem:
            raise GenerationError(f"the example of {name} is refused: {problem}")
        via = chart.get(name)
        out.append(
            Variable(
                field=f.name,
                name=name,
                type=TYPE_NAMES.get(str(f.type), str(f.type)),
                default=env_text(default),
                doc=doc,
                checks=tuple(_checks(f, doc)),
                chart=via,
                example=example,
            )
        )
    return out


def _markdown_doc(doc: str) -> str:
    """A docstring's reST literals as Markdown code."""
    return re.sub(r"``(.+?)``", r"`\1`", doc)


def _anchor(text: str) -> str:
    """GitHub's anchor for a heading."""
    slug = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return slug.replace(" ", "-")


def render_variables() -> Iterator[str]:
    items = variables()
    yield "## Environment variables"
    yield ""
    yield (
        "Every JetBridge process (the functions and the `jetbridge` command) reads these once, "
        "when it starts. An unset or empty variable means the default. Maps and lists are "
        "written as JSON. A value that cannot work stops the process at once with a message "
        "naming the variable. In the cluster the chart sets them (the column *chart value* "
        "names the Helm value each comes from); Knative's `K_SINK` stands in for "
        "`JETBRIDGE_EVENT_SINK` when that is unset."
    )
    yield ""
    yield "| variable | type | default | chart value |"
    yield "|---|---|---|---|"
    for v in items:
        default = _code(v.default) if v.default else "(empty)"
        yield f"| [`{v.name}`](#{_anchor(v.name)}) | {v.type} | {default} | {v.chart.cell if v.chart else '—'} |"
    for v in items:
        yield ""
        yield f"### {v.name}"
        yield ""
        yield prose(_markdown_doc(v.doc))
        yield ""
        yield f"- Type: {v.type}."
        yield f"- Default: {_code(v.default) + '.' if v.default else 'empty.'}"
        for check in v.checks:
            yield f"- {check}"
        if v.chart:
            yield f"- {v.chart.sentence}"
        if v.example:
            line = " ".join(f"{k}={_shell_quote(val)}" for k, val in v.example.items())
            yield f"- Example: `{line}`"


# ------------------------------------------------------------------------------ Helm values


@dataclass(frozen=True)
class Value:
    path: str
    description: str
    default: Any
    schema: Mapping[str, Any]
    example: str


@dataclass(frozen=True)
class Section:
    title: str
    text: str
    values: list[Value]


def _param_paths() -> list[str]:
    text = (CHART / "values.yaml").read_text()
    return re.findall(r"^\s*## @param (\S+) ", text, re.M)


def _lookup(tree: Any, path: str) -> Any:
    node = tree
    for key in path.split("."):
        node = node[key]
    return node


def _schema_at(schema: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    node = schema
    for key in path.split("."):
        node = node["properties"][key]
    return node


def _with(tree: Any, path: str, value: Any) -> Any:
    """A deep copy of ``tree`` with ``path`` set to ``value``."""
    copy = json.loads(json.dumps(tree))
    *parents, last = path.split(".")
    node = copy
    for key in parents:
        node = node[key]
    node[last] = value
    return copy


def _value_example(path: str, default: Any, schema: Mapping[str, Any]) -> Any:
    if path in VALUE_EXAMPLES:
        return VALUE_EXAMPLES[path]
    if isinstance(default, bool):
        return not default
    if "enum" in schema:
        others = [v for v in schema["enum"] if v != default]
        return others[0] if others else default
    if isinstance(default, int):
        minimum = schema.get("minimum", 0)
        return max(default * 2, minimum + 1) if default else max(minimum, 1)
    return None


def _set_flag(path: str, value: Any) -> str:
    if isinstance(value, bool | int) or (
        isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*", value)
    ):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        flag = "--set-string" if isinstance(value, str) and _yaml_would_retype(value) else "--set"
        return f"{flag} {path}={text}"
    return f"--set-json '{path}={json.dumps(value, separators=(',', ':'))}'"


def _yaml_would_retype(text: str) -> bool:
    return not isinstance(yaml.safe_load(text), str)


def sections() -> list[Section]:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)  # its $schema names draft 7
    out: list[Section] = []
    current: Section | None = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^## @section (.+)$", line)
        if m:
            notes = []
            for nxt in lines[i + 1 :]:
                if not nxt.startswith("## ") or nxt.startswith("## @"):
                    break
                notes.append(nxt[3:].strip())
            current = Section(m.group(1).strip(), " ".join(notes), [])
            out.append(current)
            continue
        m = re.match(r"^\s*## @param (\S+) (.+)$", line)
        if m:
            if current is None:
                current = Section("General", "", [])
                out.append(current)
            path, description = m.group(1), m.group(2).strip()
            default = _lookup(values, path)
            node = _schema_at(schema, path)
            example = _value_example(path, default, node)
            flag = ""
            if example is not None:
                try:
                    validator.validate(_with(values, path, example))
                except jsonschema.ValidationError as e:
                    raise GenerationError(
                        f"the example of {path} ({example!r}) fails the schema: {e.message}"
                    ) from None
                flag = _set_flag(path, example)
            current.values.append(Value(path, description, default, node, flag))
    return out


def _type_of(schema: Mapping[str, Any], default: Any) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "object":
        return "map"
    if kind == "array":
        return "list"
    if kind:
        return str(kind)
    return type(default).__name__


def _constraints(schema: Mapping[str, Any]) -> list[str]:
    out = []
    if "enum" in schema:
        out.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "minimum" in schema:
        out.append(f"at least {schema['minimum']}")
    if "maximum" in schema:
        out.append(f"at most {schema['maximum']}")
    if schema.get("minLength"):
        out.append(
            "not empty"
            if schema["minLength"] == 1
            else f"at least {schema['minLength']} characters"
        )
    if "pattern" in schema:
        out.append(f"matches `{schema['pattern']}`")
    names = schema.get("propertyNames", {}).get("pattern")
    if names:
        out.append(f"keys match `{names}`")
    return out


def _yaml_inline(value: Any) -> str:
    if value == "" or value is None:
        return '`""`'
    return _code(
        json.dumps(value, separators=(", ", ": ")) if not isinstance(value, str) else value
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def prose(text: str) -> str:
    """Text from the code as Markdown: outside `code`, `<x>` and `*` are shown, not markup."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "".join(parts)


def render_values() -> Iterator[str]:
    yield "## Helm values"
    yield ""
    yield (
        "The chart's values, from [values.yaml](../deploy/chart/values.yaml) (`## @param`) and "
        "[values.schema.json](../deploy/chart/values.schema.json), which `helm install` checks. "
        "Give them with `-f values.yaml` or `--set`; each example is one the schema accepts. "
        "Combinations that cannot work (no database, ReadWriteOnce with several step runners, "
        "an ingress without a host, …) fail `helm install` with a message saying what to change."
    )
    for section in sections():
        yield ""
        yield f"### {section.title}"
        yield ""
        if section.text:
            yield prose(section.text)
            yield ""
        yield "| value | default | type | description | example |"
        yield "|---|---|---|---|---|"
        for v in section.values:
            kind = _type_of(v.schema, v.default)
            rules = _constraints(v.schema)
            if rules:
                kind += "; " + "; ".join(rules)
            example = _code(v.example) if v.example else "—"
            yield (
                f"| `{v.path}` | {_cell(_yaml_inline(v.default))} | {_cell(kind)} | "
                f"{_cell(prose(v.description))} | {_cell(example)} |"
            )


# ---------------------------------------------------------------------------------- the CLI


def _commands(
    group: click.Group, ctx: click.Context
) -> Iterator[tuple[click.Context, click.Command]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        yield sub, command
        if isinstance(command, click.Group):
            yield from _commands(command, sub)


def _path(ctx: click.Context) -> str:
    return ctx.command_path


def _option_names(option: click.Option) -> str:
    names = ", ".join(f"`{n}`" for n in option.opts)
    if option.secondary_opts:
        names += " / " + ", ".join(f"`{n}`" for n in option.secondary_opts)
    return names


def _metavar(param: click.Parameter, ctx: click.Context) -> str:
    try:
        return param.make_metavar(ctx)  # click >= 8.2
    except TypeError:
        return param.make_metavar()  # type: ignore[call-arg]


def _default_text(param: click.Parameter, ctx: click.Context) -> str:
    default = param.get_default(ctx, call=False)
    if (
        callable(default)
        or default is None
        or default is False
        or default == ()
        or type(default).__name__ == "Sentinel"  # click's UNSET
    ):
        return "—"
    if isinstance(default, Path):
        default = str(default)
    return _code(str(default))


def _param_rows(ctx: click.Context, command: click.Command) -> Iterator[str]:
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    help_option = command.get_help_option(ctx)
    options = [
        p for p in command.get_params(ctx) if isinstance(p, click.Option) and p is not help_option
    ]
    if arguments:
        yield ""
        yield "| argument | type | description |"
        yield "|---|---|---|"
        for arg in arguments:
            notes = []
            if not arg.required:
                notes.append("optional")
            if arg.nargs != 1:
                notes.append("repeatable")
            desc = "; ".join(notes) if notes else "required"
            yield f"| `{_metavar(arg, ctx)}` | {arg.type.name} | {desc} |"
    if options:
        yield ""
        yield "| option | value | default | description |"
        yield "|---|---|---|---|"
        for opt in options:
            value = "flag" if opt.is_flag else f"`{_metavar(opt, ctx)}`"
            help_text = (opt.help or "").strip()
            extras = []
            if opt.required:
                extras.append("required")
            if opt.multiple and "repeatable" not in help_text.lower():
                extras.append("repeatable")
            if opt.envvar and opt.show_envvar:
                envvars = [opt.envvar] if isinstance(opt.envvar, str) else list(opt.envvar)
                extras.append("environment: " + ", ".join(f"`{e}`" for e in envvars))
            if extras:
                help_text = f"{help_text} ({'; '.join(extras)})" if help_text else "; ".join(extras)
            yield (
                f"| {_option_names(opt)} | {value} | {_default_text(opt, ctx)} | "
                f"{_cell(prose(help_text))} |"
            )


def _help(command: click.Command) -> list[str]:
    text = inspect.cleandoc(command.help or "")
    text = text.split("\f")[0]
    return [prose(line.replace("\b", "").rstrip()) for line in text.splitlines()]


def render_cli() -> Iterator[str]:
    group = cli_module.cli
    ctx = click.Context(group, info_name="jetbridge")
    yield "## The `jetbridge` command"
    yield ""
    doc = inspect.cleandoc(cli_module.__doc__ or "")
    exit_codes = re.search(r"Exit codes: (.+?)\.\s*$", " ".join(doc.split()), re.S)
    yield (
        "After `make setup`, `.venv/bin/jetbridge` (JetBridge's image has it on its `PATH`). "
        "Every command also reads the environment variables above; a flag wins over its "
        "variable. `-h` or `--help` after any command shows its help."
    )
    if exit_codes:
        yield ""
        yield f"Exit codes: {exit_codes.group(1).replace('``', '`')}."
    yield ""
    yield f"`{' '.join(group.collect_usage_pieces(ctx)).replace('[OPTIONS]', 'jetbridge [OPTIONS]', 1)}`"
    yield ""
    yield from _help(group)
    yield from _param_rows(ctx, group)
    yield ""
    yield "| command | what it does |"
    yield "|---|---|"
    commands = list(_commands(group, ctx))
    for sub, command in commands:
        if isinstance(command, click.Group):
            continue
        link = f"[`{_path(sub)}`](#{_anchor(_path(sub))})"
        yield f"| {link} | {_cell(prose(command.get_short_help_str(200)))} |"
    for sub, command in commands:
        if isinstance(command, click.Group):
            continue
        yield ""
        yield f"### {_path(sub)}"
        yield ""
        yield f"`{_path(sub)} {' '.join(command.collect_usage_pieces(sub))}`"
        yield ""
        yield from _help(command)
        yield from _param_rows(sub, command)


# ------------------------------------------------------------------------------- the page


def render() -> str:
    parts: list[Iterable[str]] = [
        [
            "# Configuration reference",
            "",
            f"<!-- Generated by docs/generate_configuration.py; `{COMMAND}` rewrites it. "
            "Do not edit by hand. -->",
            "",
            "Everything JetBridge can be told, in three places: [environment "
            "variables](#environment-variables) (read by every process, from "
            "`shared/settings.py`), the Helm chart's [values](#helm-values) (which set those "
            "variables in the cluster), and the flags of [the `jetbridge` "
            "command](#the-jetbridge-command). This page is generated from the code by "
            f"`{COMMAND}`; a test fails when it is out of date.",
            "",
        ],
        render_variables(),
        [""],
        render_values(),
        [""],
        render_cli(),
    ]
    text = "\n".join(line for part in parts for line in part)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    try:
        text = render()
    except GenerationError as e:
        print(f"cannot write {OUTPUT.relative_to(ROOT)}: {e}", file=sys.stderr)
        return 2
    if args.check:
        if OUTPUT.exists() and OUTPUT.read_text() == text:
            return 0
        print(f"{OUTPUT.relative_to(ROOT)} is stale: run `{COMMAND}`", file=sys.stderr)
        return 1
    if not OUTPUT.exists() or OUTPUT.read_text() != text:
        OUTPUT.write_text(text)
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    else:
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
