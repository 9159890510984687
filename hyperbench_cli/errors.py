"""The CLI's exit codes and its one error type (a one-line message, never a traceback)."""

from __future__ import annotations

EXIT_OK = 0
#: The followed run (or comparison) ended failed or cancelled.
EXIT_RUN_FAILED = 1
#: A usage error: bad flags or arguments, an unreadable config file (argparse also exits 2).
EXIT_USAGE = 2
#: The API answered an error (400, 404, 409, 429, 5xx) or could not be reached.
EXIT_API = 3
#: Not logged in, a token the server refuses (401), or not allowed (403).
EXIT_AUTH = 4

EXIT_CODES_HELP = """exit codes:
  0  the command succeeded (with --follow: the run succeeded)
  1  the followed run or comparison failed or was cancelled
  2  usage error (bad arguments, unreadable config file)
  3  API error: the server's answer (400, 404, 409, 429 with Retry-After, 5xx) or no answer
  4  authentication error: no token, a token refused (401), or not allowed (403)"""


class CliError(Exception):
    """A failure the CLI reports as ``hyperbench: <message>`` and exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_API, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
