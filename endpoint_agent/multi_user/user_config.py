"""A user endpoint's config: `user_config_template.yaml.j2` rendered with the submitter's
`user_endpoint_config`, after it passed `user_config_schema.json` (both in the multi-user
endpoint's folder).

Order, and why: the variables are validated against the JSON Schema first (a bad value is refused
naming its field, before anything is rendered or started); then each string value is checked for
control characters (a newline could add YAML keys); the template is rendered in Jinja2's
sandboxed environment (no attribute access to Python internals) with `StrictUndefined` (a
variable the template uses and the user did not give is an error naming it, unless the template
gives a `default`); every value a `{{ }}` prints is shell-quoted when it is not a plain word
(`finalize`), so a value that reaches `worker_init` or another shell command is one word, never
code; the result must be YAML and a valid `EndpointConfig` (its errors name the key), and cannot
be a multi-user endpoint itself.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from taskfabric.errors import ConfigError

__all__ = ["SCHEMA_FILE", "TEMPLATE_FILE", "UserConfigRefused", "UserConfigTemplate"]

TEMPLATE_FILE = "user_config_template.yaml.j2"
SCHEMA_FILE = "user_config_schema.json"
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_.:/@%+=,-]*")
#: control characters, and what YAML also reads as a line break (NEL, LINE and PARAGRAPH SEPARATOR):
#: in a block scalar of the template, any of them ends the line and lets a value add keys
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
#: what a parent uses when its folder has no template: a local provider, one worker
DEFAULT_TEMPLATE = """\
provider:
  type: LocalProvider
  init_blocks: 0
  min_blocks: 0
  max_blocks: 1
"""


class UserConfigRefused(Exception):
    """The user's config (or what the template made of it) is not acceptable; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True, slots=True)
class UserConfigTemplate:
    template: str
    schema: dict[str, Any] | None

    @classmethod
    def from_folder(cls, folder: Path) -> UserConfigTemplate:
        """The template and schema of a multi-user endpoint's folder (`ConfigError` if unreadable)."""
        template_path, schema_path = folder / TEMPLATE_FILE, folder / SCHEMA_FILE
        template = template_path.read_text() if template_path.exists() else DEFAULT_TEMPLATE
        schema = None
        if schema_path.exists():
            try:
                schema = json.loads(schema_path.read_text())
            except ValueError as exc:
                raise ConfigError(f"not valid JSON: {exc}", source=str(schema_path)) from None
            _check_schema(schema, str(schema_path))
        made = cls(template=template, schema=schema)
        made._environment().parse(template)  # a syntax error is the administrator's, reported at start
        return made

    def render(self, variables: dict[str, Any]) -> dict[str, Any]:
        """The user endpoint's config mapping; `UserConfigRefused` names the bad field."""
        self.validate(variables)
        import jinja2

        try:
            text = self._environment().from_string(self.template).render(**variables)
        except jinja2.UndefinedError as exc:
            raise UserConfigRefused("user_endpoint_config", f"the template needs a value: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise UserConfigRefused("user_endpoint_config", f"the template failed: {exc}") from None
        try:
            rendered = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserConfigRefused("user_endpoint_config", f"the rendered config is not valid YAML ({exc})") from None
        if not isinstance(rendered, dict):
            raise UserConfigRefused("user_endpoint_config", "the rendered config is not a mapping")
        if rendered.get("multi_user"):
            raise UserConfigRefused("multi_user", "a user endpoint cannot be a multi-user endpoint")
        return rendered

    def validate(self, variables: dict[str, Any]) -> None:
        """Check the variables against the schema and refuse control characters in strings."""
        if self.schema is not None:
            import jsonschema

            validator = jsonschema.Draft202012Validator(self.schema)
            error = jsonschema.exceptions.best_match(validator.iter_errors(variables))
            if error is not None:
                raise UserConfigRefused(_field_of(error), error.message)
        for field, value in _strings(variables, "user_endpoint_config"):
            if _CONTROL.search(value):
                raise UserConfigRefused(field, "control characters (such as newlines) are not allowed")

    def _environment(self) -> Any:
        from jinja2 import StrictUndefined
        from jinja2.sandbox import SandboxedEnvironment

        environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_quoted)
        environment.filters["shell_quote"] = shlex.quote
        return environment


def _quoted(value: Any) -> Any:
    """Every printed string that is not a plain word is shell-quoted (see the module docstring)."""
    if isinstance(value, str) and not _PLAIN_WORD.fullmatch(value):
        return shlex.quote(value)
    return value


def _field_of(error: Any) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:
            path = ".".join(filter(None, [path, missing[0]]))
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set((error.schema or {}).get("properties", {}))
        extra = sorted(set(error.instance) - allowed)
        if extra:
            path = ".".join(filter(None, [path, extra[0]]))
    return f"user_endpoint_config.{path}" if path else "user_endpoint_config"


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [item for key, inner in value.items() for item in _strings(inner, f"{path}.{key}")]
    if isinstance(value, list):
        return [item for index, inner in enumerate(value) for item in _strings(inner, f"{path}[{index}]")]
    return []


def _check_schema(schema: Any, source: str) -> None:
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise ConfigError(f"not a valid JSON Schema: {exc.message}", source=source) from None
