"""The ``more`` command line: one module per subcommand, wired together in :mod:`.app`."""
