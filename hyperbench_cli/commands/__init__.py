"""The commands, one module per group; each ``cmd_*`` takes a Ctx and returns an exit code."""
