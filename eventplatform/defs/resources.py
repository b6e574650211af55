"""Dagster resources: the platform's settings, handed to assets and sensors."""

from __future__ import annotations

from dagster import ConfigurableResource

from eventplatform.settings import Settings, get_settings


class PlatformResource(ConfigurableResource):
    """Gives assets the platform's settings (from the environment, like every other part)."""

    def settings(self) -> Settings:
        return get_settings()
