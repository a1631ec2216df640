"""Tether's settings: the schema (`schema`) and how it is loaded, yaml < env < flags (`loader`).

The loader is Tether's own rather than pydantic-settings: its errors name the key *and* the
environment variable that set it (of several aliases, `TETHER_*` before the seeds' `MLC_*`),
secrets are never echoed, relative paths are resolved against the config file or the working
directory, and the environment is passed in (`environ=`), so tests never read the process's.
"""

from tether.config.loader import (
    ConfigError,
    default_dist_path,
    describe_validation_error,
    env_layer,
    load_settings,
    source_checkout,
)
from tether.config.schema import (
    DEFAULT_SYSTEM_PROMPT,
    EngineSettings,
    LimitsSettings,
    LlamaCppSettings,
    LogSettings,
    McpServerConfig,
    McpSettings,
    MetricsSettings,
    MLCSettings,
    OpenAISettings,
    ReliabilitySettings,
    SecuritySettings,
    ServerSettings,
    Settings,
    StorageSettings,
    ToolsSettings,
    default_data_dir,
)

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "ConfigError",
    "EngineSettings",
    "LimitsSettings",
    "LlamaCppSettings",
    "LogSettings",
    "MLCSettings",
    "McpServerConfig",
    "McpSettings",
    "MetricsSettings",
    "OpenAISettings",
    "ReliabilitySettings",
    "SecuritySettings",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "ToolsSettings",
    "default_data_dir",
    "default_dist_path",
    "describe_validation_error",
    "env_layer",
    "load_settings",
    "source_checkout",
]
