"""The drdc command line: thin typer commands over the `stages` library."""
