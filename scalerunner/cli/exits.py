"""The documented exit codes of every Scalerunner command."""

OK = 0
FAILED = 1
USAGE = 2  # click uses 2 for usage errors too
UNREACHABLE = 3
