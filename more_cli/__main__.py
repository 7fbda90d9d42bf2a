"""``python -m more_cli`` runs the ``more`` command line."""

from more_cli.cli.app import main

if __name__ == "__main__":
    main()
