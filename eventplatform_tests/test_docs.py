"""The docs stay navigable: every relative link in the README, docs/ and bench/README.md
points at a file that exists, and docs/settings.md lists every setting settings.py has.

`python -m eventplatform_tests.test_docs` prints the settings table (paste it into
docs/settings.md's "Every setting" section when settings change)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

import eventplatform.settings as settings_module
from eventplatform.settings import REPO_ROOT

DOCS = [
    REPO_ROOT / "README.md",
    REPO_ROOT / "bench" / "README.md",
    *sorted((REPO_ROOT / "docs").glob("*.md")),
]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
# docs/dagster.md is written by the Dagster side of issue 15; until it lands it may be absent.
NOT_YET = {REPO_ROOT / "docs" / "dagster.md"}


def settings_rows() -> list[tuple[str, str, str]]:
    """(environment variable(s), default, description) of every field of every section."""
    rows = []
    for _, cls in vars(settings_module).items():
        if not (inspect.isclass(cls) and issubclass(cls, BaseSettings)) or cls is BaseSettings:
            continue
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            names = [f"{prefix}{name}".upper()]
            alias = field.validation_alias
            if alias is not None and hasattr(alias, "choices"):
                names = [str(choice) for choice in alias.choices]
            rows.append(
                (" / ".join(f"`{n}`" for n in names), _default(field), field.description or "")
            )
    return rows


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(computed)"
    value = field.default
    if value is PydanticUndefined or value is None:
        return "(unset)"
    if isinstance(value, Path) and value.is_relative_to(REPO_ROOT):
        value = f"<repo>/{value.relative_to(REPO_ROOT)}"
    text = str(value).replace("|", "\\|")
    return f"`{text}`" if text else "(empty)"


def settings_table() -> str:
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| {v} | {d} | {m.replace('|', '/')} |" for v, d, m in settings_rows()]
    return "\n".join(lines) + "\n"


def test_every_relative_link_points_at_a_file() -> None:
    broken = []
    for doc in DOCS:
        for target, _anchor in LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve()
            if not path.exists() and path not in NOT_YET:
                broken.append(f"{doc.relative_to(REPO_ROOT)}: {target}")
    assert not broken, broken


def test_no_link_leaves_the_repository() -> None:
    outside = [
        f"{doc.relative_to(REPO_ROOT)}: {target}"
        for doc in DOCS
        for target, _ in LINK.findall(doc.read_text())
        if "://" not in target and not (doc.parent / target).resolve().is_relative_to(REPO_ROOT)
    ]
    assert not outside, outside


def test_docs_settings_lists_every_setting() -> None:
    text = (REPO_ROOT / "docs" / "settings.md").read_text()
    missing = [v for v, _, _ in settings_rows() if v.split(" / ")[0] not in text]
    assert not missing, f"not in docs/settings.md (regenerate its table): {missing}"


if __name__ == "__main__":
    print(settings_table(), end="")
