"""One module per `muse-stream` sub-command; each defines add(subparsers).
May import anything."""
