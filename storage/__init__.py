"""Storage: the versioned dataset store, its DuckDB catalog, and the content-addressed stage cache."""

from jstip.storage.store import (DatasetStore, DatasetVersion, ModelBusyError, RegistryError, StoreBusyError,
                                 StoreError, VerifyReport, VersionIntegrityError, version_id_for)

__all__ = ["DatasetStore", "DatasetVersion", "ModelBusyError", "RegistryError", "StoreBusyError", "StoreError",
           "VerifyReport", "VersionIntegrityError", "version_id_for"]
