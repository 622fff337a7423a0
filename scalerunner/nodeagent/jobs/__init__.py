"""Jobs on the node: the executor that obeys run/cancel/resend_log, its log spool and artifacts."""

from .artifacts import Artifact, Selection, UploadError, select, upload
from .executor import ImageSource, JobExecutor, Link, LinkDown, admit, finished_status
from .spool import LogSpool

__all__ = [
    "Artifact",
    "ImageSource",
    "JobExecutor",
    "Link",
    "LinkDown",
    "LogSpool",
    "Selection",
    "UploadError",
    "admit",
    "finished_status",
    "select",
    "upload",
]
