"""The ``hf-mergeguard`` command line: thin commands over the library API."""
