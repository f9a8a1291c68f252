"""The `stoker` command line: the user's entry to every layer below."""
