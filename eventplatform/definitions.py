"""The code location: every definition under eventplatform/defs/, autoloaded, with the
typed resources made from the settings (tests call ``build_defs`` with their own)."""

from pathlib import Path

import dagster as dg

from eventplatform.defs.resources import platform_resources
from eventplatform.settings import Settings, get_settings


def build_defs(settings: Settings) -> dg.Definitions:
    folder = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return folder.with_resources(platform_resources(settings))


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(get_settings())
