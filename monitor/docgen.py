"""The generated parts of `docs/`: HTTP routes from the OpenAPI schema, CLI options from argparse.

    python -m monitor.docgen            # rewrite the generated parts of docs/api.md and docs/cli.md
    python -m monitor.docgen --check    # exit 1 naming each file whose generated part is stale

Each generated part sits between a `<!-- BEGIN generated: NAME ... -->` and an
`<!-- END generated: NAME -->` line of its Markdown file; everything else in the file
is written by hand. `tests/test_docs.py` fails when a part is out of date, so a
change of a route, a parameter or an option shows up as a one-command fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

JsonSchema = dict[str, Any]
BEGIN = "<!-- BEGIN generated: {name} (python -m monitor.docgen; do not edit by hand) -->"
END = "<!-- END generated: {name} -->"


# -- the HTTP API ------------------------------------------------------------------


def openapi_schema() -> JsonSchema:
    """The OpenAPI schema of the API as `create_app` builds it, with default settings.

    Building the routes reads only the settings (page sizes); every other part of the
    context is used when a request is served, so placeholders do here.
    """
    from monitor.api.app import create_app
    from monitor.api.context import ApiContext
    from monitor.platform.config import Settings

    parts: dict[str, Any] = {f.name: None for f in dataclasses.fields(ApiContext) if f.init}
    parts["settings"] = Settings()
    schema: JsonSchema = create_app(ApiContext(**parts)).openapi()
    return schema


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _resolve(schema: JsonSchema, node: JsonSchema) -> JsonSchema:
    ref = node.get("$ref")
    if ref is None:
        return node
    name = str(ref).rsplit("/", 1)[-1]
    found: JsonSchema = schema["components"]["schemas"][name]
    return found


def type_of(schema: JsonSchema, node: JsonSchema) -> str:
    """A parameter's or field's type in words: `elec` | `taxi`, integer 1…1000, string, …"""
    options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
    if options:
        return " or ".join(type_of(schema, o) for o in options)
    node = _resolve(schema, node)
    if "enum" in node:
        return " | ".join(f"`{v}`" for v in node["enum"])
    kind = str(node.get("type", "any"))
    if kind == "array":
        return f"array of {type_of(schema, node.get('items', {}))}"
    kind += _bounds(node.get("minimum"), node.get("maximum"), "")
    kind += _bounds(node.get("minLength"), node.get("maxLength"), " characters")
    if "pattern" in node:
        kind += f" `{node['pattern']}`"
    return kind


def _bounds(low: object, high: object, unit: str) -> str:
    """ " 1–1000", " ≥ 1", " ≤ 64 characters" or "" for a range with either end open."""
    if low is not None and high is not None:
        return f" {low}–{high}{unit}"
    if low is not None:
        return f" ≥ {low}{unit}"
    if high is not None:
        return f" ≤ {high}{unit}"
    return ""


def _default(node: JsonSchema) -> str:
    return f"`{json.dumps(node['default'])}`" if "default" in node else ""


def _parameters(schema: JsonSchema, op: JsonSchema) -> list[str]:
    params = op.get("parameters", [])
    if not params:
        return []
    lines = ["| parameter | in | type | default |", "|---|---|---|---|"]
    for p in params:
        name = f"`{p['name']}`" + (" (required)" if p.get("required") else "")
        lines.append(
            f"| {name} | {p['in']} | {_cell(type_of(schema, p['schema']))} "
            f"| {_cell(_default(p['schema']))} |"
        )
    return [*lines, ""]


def _fields(schema: JsonSchema, model: JsonSchema) -> list[str]:
    required = set(model.get("required", []))
    lines = ["| field | type | required | what |", "|---|---|---|---|"]
    for name, node in model.get("properties", {}).items():
        lines.append(
            f"| `{name}` | {_cell(type_of(schema, node))} | {'yes' if name in required else ''} "
            f"| {_cell(str(node.get('description', '')))} |"
        )
    return lines


def _body(schema: JsonSchema, op: JsonSchema) -> list[str]:
    content: dict[str, JsonSchema] = op.get("requestBody", {}).get("content", {})
    if not content:
        return []
    lines = []
    for media, spec in content.items():
        node = spec.get("schema", {})
        items = node.get("items") if node.get("type") == "array" else None
        target = _resolve(schema, items if items is not None else node)
        what = "a JSON array of objects" if items is not None else "a JSON object"
        if "properties" in target:
            about = str(target.get("description", "")).strip()
            lines += [f"Body (`{media}`), {what}." + (f" {about}" if about else ""), ""]
            lines += [*_fields(schema, target), ""]
        else:
            lines += [f"Body (`{media}`): {type_of(schema, node)}.", ""]
    return lines


def _operations(schema: JsonSchema) -> Iterator[tuple[str, str, JsonSchema]]:
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def render_api(schema: JsonSchema) -> str:
    """Every route of the schema, grouped by tag in order: what it does, parameters, body."""
    by_tag: dict[str, list[tuple[str, str, JsonSchema]]] = {}
    for method, path, op in _operations(schema):
        by_tag.setdefault(op.get("tags", ["other"])[0], []).append((method, path, op))
    out = ["| method and path | what | roles |", "|---|---|---|"]
    for method, path, op in _operations(schema):
        first = str(op.get("description") or op.get("summary", "")).split("\n\n")[0]
        out.append(f"| `{method} {path}` | {_cell(first)} | {_roles(method, path)} |")
    for tag, ops in by_tag.items():
        out += ["", f"### {tag}"]
        for method, path, op in ops:
            success = next((c for c in op.get("responses", {}) if c.startswith("2")), "200")
            out += ["", f"#### `{method} {path}`", ""]
            out += [str(op.get("description") or op.get("summary", "")).strip(), ""]
            out += _parameters(schema, op) + _body(schema, op)
            out.append(f"Success: `{success}`. Roles: {_roles(method, path)}.")
    return "\n".join(out)


def _roles(method: str, path: str) -> str:
    """Who may call a route with an access file in force (api/guard.py)."""
    from monitor.api.guard import PUBLIC, ROUTE_RULES

    rule = ROUTE_RULES.get((method, path))
    if rule is None:
        return "none (no rule)"
    if rule is PUBLIC:
        return "open to all"
    roles = ", ".join(sorted(rule.roles))
    return roles + (" (scope `*`)" if rule.whole_fleet else "")


# -- the command line ------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _commands(
    parser: argparse.ArgumentParser, prefix: str, help_text: str
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(command line, its help, its parser) of every command that runs something."""
    sub = _subcommands(parser)
    if sub is None:
        yield prefix, help_text, parser
        return
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    for name, child in sub.choices.items():
        yield from _commands(child, f"{prefix} {name}", helps.get(name, ""))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
    ]


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    return action.dest.upper()


def _usage(command: str, parser: argparse.ArgumentParser) -> str:
    parts = [command]
    for a in _options(parser):
        if not a.option_strings:
            word = _metavar(a)
            parts.append(f"[{word}]" if a.nargs == "?" else word)
            continue
        word = a.option_strings[0] + (f" {_metavar(a)}" if _takes_value(a) else "")
        parts.append(word if a.required else f"[{word}]")
    return " ".join(parts)


def _option_row(action: argparse.Action) -> str:
    if action.option_strings:
        value = f" {_metavar(action)}" if _takes_value(action) else ""
        name = ", ".join(f"`{o}{value}`" for o in action.option_strings)
    else:
        name = f"`{_metavar(action)}`" + (" (optional)" if action.nargs == "?" else "")
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) else f"`{default}`"
    if action.required:
        shown = "required"
    return f"| {name} | {_cell(shown)} | {_cell(str(action.help or ''))} |"


def render_cli(parser: argparse.ArgumentParser) -> str:
    """Every command with its usage line and a table of its arguments and options."""
    out = ["| command | what |", "|---|---|"]
    commands = list(_commands(parser, parser.prog, ""))
    for command, help_text, _ in commands:
        out.append(f"| `{command}` | {_cell(help_text)} |")
    out += ["", "Options every command takes (before the command name):", ""]
    out += ["| argument or option | default | what |", "|---|---|---|"]
    out += [_option_row(a) for a in _options(parser)]
    for command, help_text, child in commands:
        out += ["", f"### `{command}`", "", help_text, "", "```", _usage(command, child), "```"]
        rows = [_option_row(a) for a in _options(child)]
        if rows:
            out += ["", "| argument or option | default | what |", "|---|---|---|", *rows]
    return "\n".join(out)


def cli_parser() -> argparse.ArgumentParser:
    """The `monitor` command's parser."""
    from monitor.cli import build_parser

    return build_parser()


# -- splicing into the Markdown files -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Part:
    """A generated part: which file, which marker name, and what renders it."""

    path: str
    name: str
    render: Callable[[], str]


PARTS = (
    Part("docs/api.md", "routes", lambda: render_api(openapi_schema())),
    Part("docs/cli.md", "commands", lambda: render_cli(cli_parser())),
)


def splice(text: str, name: str, body: str) -> str:
    """`text` with the lines between the markers of `name` replaced by `body`."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    head, found, rest = text.partition(begin)
    if not found or end not in rest:
        raise ValueError(f"no '{begin}' … '{end}' lines to put the generated part between")
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def outdated(root: Path, parts: Sequence[Part] = PARTS) -> dict[Path, str]:
    """Files under `root` whose generated part differs from what renders now → new text."""
    out = {}
    for part in parts:
        path = root / part.path
        text = path.read_text(encoding="utf-8")
        fresh = splice(text, part.name, part.render())
        if fresh != text:
            out[path] = fresh
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the generated parts (or, with --check, report which are stale)."""
    parser = argparse.ArgumentParser(prog="python -m monitor.docgen", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository checkout")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = outdated(args.root)
    for path, text in stale.items():
        if args.check:
            print(f"{path}: generated part out of date; run python -m monitor.docgen")
        else:
            path.write_text(text, encoding="utf-8")
            print(f"{path}: rewritten")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
