"""One module per `vlm-attn` subcommand; each exposes `register(subparsers)`. Listed in `COMMANDS`."""

COMMANDS = ["generate", "calibrate_sinks", "inspect", "eval", "score", "report", "compare", "tune", "calibrate_heads"]
