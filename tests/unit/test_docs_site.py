"""The documentation site: `mkdocs build --strict` passes, and its generated reference holds every command,
every argument and every setting, computed here from the same parser and settings classes independently.
The README: short, `make run` first, and no path outside the repository."""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rewind_cli.main import build_parser
from rewind_runtime import settings as mechanism
from tests.support.paths import REPO

# Its module-scoped services are built once: every test of the module runs on the same xdist worker.
pytestmark = pytest.mark.xdist_group("test_docs_site")

SETTINGS_CLASSES = {"BufferServiceSettings", "CheckpointSettings", "CollectSettings", "TrainSettings"}
CLIENTS = ("rewind.buffer_client.BufferClient", "rewind.checkpoint_client.CheckpointClient",
           "rewind.trainer_client.TrainerClient")


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, not a warning of ours
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The real site, built once for this module, into a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    result = mkdocs_build(REPO / "mkdocs.yml", site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return site


def section_html(site: Path, page: str, start: str, stops: tuple[str, ...] = ()) -> str:
    """A built page's HTML from the element with id `start` to the next element with an id in `stops`."""
    text = (site / page / "index.html").read_text()
    begin = text.index(f'id="{start}"')
    found = [text.find(f'id="{stop}"', begin + 1) for stop in stops if stop != start]
    ends = [text.rfind("<", 0, i) for i in found if i > 0]  # the start of the element that has the id
    return text[begin:min(ends, default=len(text))]


def visible(markup: str) -> str:
    """The text a reader sees, whitespace collapsed."""
    return squash(html.unescape(re.sub(r"<[^>]+>", " ", markup.split(">", 1)[1])))


def rows(markup: str) -> list[str]:
    """The visible text of each table row."""
    return [visible("<tr>" + row) for row in re.findall(r"<tr>(.*?)</tr>", markup, re.S)]


def walk(parser: argparse.ArgumentParser, words: tuple[str, ...] = ("rewind",)):
    """(words, parser) for every command, sub-commands after their group; an alias's parser only once."""
    yield words, parser
    seen = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from walk(sub, (*words, name))


def anchor(words: tuple[str, ...]) -> str:
    return "-".join(words)


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# -- the build --------------------------------------------------------------------------------------


def test_the_site_builds_strictly_with_every_page_of_the_nav(site):
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = []

    def collect(entries) -> None:
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            collect(value) if isinstance(value, list) else pages.append(value)

    collect(config["nav"])
    assert sorted(pages) == sorted(str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md"))
    for page in pages:
        built = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert built.is_file(), page
    assert (site / "images" / "history-run.png").is_file()
    assert (site / "images" / "bench" / "learning-pendulum-v1.png").is_file()  # from bench/results/


def test_a_broken_link_or_a_dead_anchor_fails_the_build(tmp_path):
    """The site's own link checks (validation in mkdocs.yml), on a two-page site with one bad link each way."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[a page that is not there](missing.md)\n")
    (docs / "other.md").write_text("# Other\n\n[a heading that is not there](index.md#no-such-heading)\n")
    small = {key: config[key] for key in ("site_name", "strict", "validation", "markdown_extensions")}
    small.update(docs_dir=str(docs), nav=["index.md", "other.md"], theme={"name": "material", "font": False})
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(small))
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "missing.md" in result.stderr and "no-such-heading" in result.stderr, result.stderr


# -- the generated reference ------------------------------------------------------------------------


def test_the_settings_page_has_every_setting_of_every_command_with_its_flag_variable_key_and_default(site):
    found = set()
    commands = [(words, p) for words, p in walk(build_parser()) if p.get_default("settings_class")]
    for words, parser in commands:
        cls = parser.get_default("settings_class")
        found.add(cls.__name__)
        table = rows(section_html(site, "reference/settings", anchor(words), tuple(anchor(w) for w, _ in commands)))
        for spec in mechanism.specs(cls):
            found_rows = [r for r in table if re.search(rf"(?<!\w){mechanism.env_name(spec.name)}(?!\w)", r)]
            assert len(found_rows) == 1, (words, spec.name, len(found_rows))
            [row] = found_rows
            default = json.dumps(list(spec.default) if isinstance(spec.default, tuple) else spec.default)
            flag = f"--{spec.name.replace('_', '-')}"
            for value in (flag, *(mechanism.env_name(n) for n in spec.names), spec.name, default, squash(spec.help)):
                assert value in row, (words, spec.name, value, row)
    assert found == SETTINGS_CLASSES


def test_the_settings_page_has_the_client_variables(site):
    from rewind.security import ENV

    table = rows(section_html(site, "reference/settings", "client-variables"))
    for name, variable in ENV.items():
        assert [r for r in table if r.startswith(f"--{name.replace('_', '-')} {variable} ")], (name, variable)


def test_the_cli_page_has_every_command_with_every_argument_its_help_and_examples(site):
    commands = list(walk(build_parser()))
    assert len(commands) > 20
    anchors = tuple(anchor(words) for words, _ in commands)
    for words, parser in commands:
        text = visible(section_html(site, "reference/cli", anchor(words), anchors))
        assert text.startswith(" ".join(words) + " "), text[:80]
        cls = parser.get_default("settings_class")
        specs = {spec.name: spec for spec in mechanism.specs(cls)} if cls else {}
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            for name in action.option_strings or [action.metavar or action.dest]:
                assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (words, name)
            shown = specs[action.dest].help if action.default is argparse.SUPPRESS else action.help
            if shown:
                shown = shown % {**vars(action), "prog": parser.prog} if "%(" in shown else shown
                assert squash(shown.replace("`", "")) in text, (words, shown)
            for choice in action.choices or ():
                assert str(choice) in text, (words, choice)
        for line in (parser.epilog or "").splitlines():
            assert squash(line) in text, (words, line)


def test_the_cli_page_names_the_aliases_of_a_command(site):
    text = visible(section_html(site, "reference/cli", "rewind-ckpt", ("rewind-ckpt-serve",)))
    assert "Also spelt rewind checkpoint" in text


def test_the_sdk_page_documents_the_clients_and_their_public_methods(site):
    import importlib
    import inspect

    page = (site / "reference" / "sdk" / "index.html").read_text()
    for path in CLIENTS:
        module, name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        public = [m for m, v in vars(cls).items()
                  if not m.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))]
        assert len(public) >= 3, path
        for member in (path, *(f"{path}.{m}" for m in public)):
            assert f'id="{member}"' in page, member
    assert 'id="rewind_trainer.api.train"' in page and 'id="rewind_checkpoint.api.list_checkpoints"' in page
    assert "TD-MPC2" in html.unescape(page)  # a docstring's text, not just the headings


def test_an_unknown_marker_fails_the_build_naming_it():
    from mkdocs.exceptions import PluginError

    from docs_hooks import mkdocs_hooks

    class File:
        src_uri = "reference/x.md"

    class Page:
        file = File

    with pytest.raises(PluginError, match=r"reference/x.md: unknown marker <!-- rewind:nope -->"):
        mkdocs_hooks.on_page_markdown("# X\n\n<!-- rewind:nope -->\n", Page, None, None)


# -- the README -------------------------------------------------------------------------------------


README = (REPO / "README.md").read_text()


def test_the_readme_is_short_and_starts_with_make_run_then_make_test():
    assert len(README.splitlines()) <= 300
    assert 0 <= README.index("make run") < README.index("make test")
    assert "](docs/images/history-run.png)" in README


def test_the_readme_names_no_path_outside_the_repository_and_every_link_resolves():
    assert "shared/seeds" not in README and "../" not in README
    assert not re.search(r"(?<![\w:/.$])/(?:home|work|tmp|var|usr|etc|opt|root)/", README)
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    assert len(links) > 30
    for link in links:
        assert not re.match(r"[a-z]+://", link), f"README links outside the repository: {link}"
        path = REPO / link.split("#", 1)[0]
        assert path.resolve().is_relative_to(REPO) and path.exists(), link
