"""The README's settings table against :class:`app.settings.Settings`, so neither drifts.

Every field's comment in ``app/settings.py`` names its variable (``STREAMSCRIBE_<FIELD>``); the
README's "Configuration" table must list exactly those variables (plus the ones other modules
read, :data:`READ_ELSEWHERE`), each with the default the dataclass has.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

from app import settings as settings_module
from app.settings import ENV_PREFIX, Settings
from tests.helpers.server import ROOT

#: Variables in the table that ``Settings`` does not read (read where they are used).
READ_ELSEWHERE = {
    "STREAMSCRIBE_CACHE",  # transcriber/convert.py: converted weights
    "STREAMSCRIBE_YTDLP_EXTRACTOR_ARGS",  # transcriber/media/sources.py: yt-dlp's options
}
#: Defaults the README gives in words rather than as a value.
IN_WORDS = {"allowed_hosts": "YouTube's hosts", "workers": "`0` (auto)", "threads": "`0` (auto)"}

_ROW = re.compile(r"^\| `(STREAMSCRIBE_[A-Z_]+)` \| ([^|]+) \|", re.M)


def readme_table() -> dict[str, str]:
    """``{variable: default cell}`` of the README's settings table."""
    text = (ROOT / "README.md").read_text()
    # The "Configuration" section (the Modal deployment's own variables have their section).
    text = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return {name: cell.strip() for name, cell in _ROW.findall(text)}


def as_readme(value: object) -> str:
    """A default as the README writes it: `value`, or unset/none for nothing."""
    if value is None:
        return "unset"
    if value == ():
        return "none"
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, tuple):
        value = ",".join(map(str, value))
    return f"`{value}`"


def test_every_setting_is_in_the_readme_table_with_its_default():
    table = readme_table()
    fields = {ENV_PREFIX + f.name.upper(): f for f in dataclasses.fields(Settings)}
    assert set(table) - READ_ELSEWHERE == set(fields), "README table vs Settings fields"
    defaults = Settings()
    for name, f in fields.items():
        want = IN_WORDS.get(f.name) or as_readme(getattr(defaults, f.name))
        if isinstance(getattr(defaults, f.name), type(defaults.data_dir)):
            want = f"`./{getattr(defaults, f.name)}`"
        assert table[name] == want, (name, table[name], want)


def test_every_setting_documents_its_variable_where_it_is_defined():
    source = inspect.getsource(Settings)
    for f in dataclasses.fields(Settings):
        comment = rf"#: ``{ENV_PREFIX}{f.name.upper()}``: \S.*\n(?:\s*#:.*\n)*\s*{f.name}:"
        assert re.search(comment, source), f"{f.name} has no '#: ``{ENV_PREFIX}...``' comment"
    assert "checks it against" in settings_module.__doc__
