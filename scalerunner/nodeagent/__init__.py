"""The agent on each Scalenode (telemetry, control, job runtimes, LED driving).

Only its command-line entry point exists so far; docs/architecture.md says what
is built and what is planned.
"""
