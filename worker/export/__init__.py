"""Export staging and the ZIP package a data subject receives.

``ExportStore`` is the facade; see ``worker.export.store`` for its contract."""

from worker.export.settings import MAX_URL_TTL_HOURS, ExportSettings, export_settings
from worker.export.staging import StagingWriter
from worker.export.store import ExportInfo, ExportStore

__all__ = [
    "MAX_URL_TTL_HOURS",
    "ExportInfo",
    "ExportSettings",
    "ExportStore",
    "StagingWriter",
    "export_settings",
]
