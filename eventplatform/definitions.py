"""The code location: every definition under eventplatform/defs/, autoloaded, with the
typed resources made from the settings (tests call ``build_defs`` with their own)."""

import threading
from pathlib import Path

import dagster as dg

from eventplatform.defs.resources import platform_resources
from eventplatform.settings import Settings, get_settings


def build_defs(settings: Settings) -> dg.Definitions:
    folder = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return folder.with_resources(platform_resources(settings))


# Definitions built per settings object (``get_settings`` gives one per environment), kept
# with it so that its id is not reused. Dagster loads the code location several times per
# process (a run loads it to reconstruct the repository, then the job), and each load of
# the defs folder took 1-2 s.
_BUILT: dict[int, tuple[Settings, dg.Definitions]] = {}
_BUILT_LOCK = threading.Lock()


@dg.definitions
def defs() -> dg.Definitions:
    settings = get_settings()
    with _BUILT_LOCK:
        if id(settings) not in _BUILT:
            if len(_BUILT) >= 16:
                _BUILT.clear()
            _BUILT[id(settings)] = (settings, build_defs(settings))
        return _BUILT[id(settings)][1]
