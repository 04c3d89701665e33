"""Work on many images at once, for the command line, one module per job:

- ``importing``: import a folder, each file through the unit of work an HTTP upload uses;
- ``reprocessing``: derive every avatar's squares again, resumable from a checkpoint;
- ``processing``: run the pure pipeline on local files, no database or storage.

``common`` holds what they share: the ``Outcome`` of one file or user, the codes only bulk work
has, the limited read and the fan-out over the image workers. Nothing here prints: progress
goes to the ``on_done`` callbacks, results into the reports.
"""

from app.services.bulk.common import (
    Code,
    Outcome,
    group_by_code,
    read_limited,
)
from app.services.bulk.importing import (
    ImportFile,
    ImportPlan,
    ImportReport,
    import_files,
    plan_import,
)
from app.services.bulk.processing import (
    REPORT_FILE,
    Processed,
    ProcessReport,
    describe,
    process_files,
)
from app.services.bulk.reprocessing import (
    Checkpoint,
    CheckpointMismatch,
    ReprocessReport,
    count_users_after,
    reprocess_avatars,
    run_fingerprint,
    user_ids_after,
)

__all__ = [
    "REPORT_FILE",
    "Checkpoint",
    "Code",
    "CheckpointMismatch",
    "ImportFile",
    "ImportPlan",
    "ImportReport",
    "Outcome",
    "ProcessReport",
    "Processed",
    "ReprocessReport",
    "count_users_after",
    "describe",
    "group_by_code",
    "import_files",
    "plan_import",
    "process_files",
    "read_limited",
    "reprocess_avatars",
    "run_fingerprint",
    "user_ids_after",
]
