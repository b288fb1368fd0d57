"""Entry point: ``python cli.py COMMAND``; delegates to :mod:`wakemodel.cli`."""

from wakemodel.cli import main

if __name__ == "__main__":
    main()
