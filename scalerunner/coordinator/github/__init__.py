"""GitHub Actions runners: ``workflow_job`` webhook -> just-in-time runner jobs (docs/github.md)."""

from .service import GitHubService

__all__ = ["GitHubService"]
