"""How commands look and end: options derived from config fields, renderers, exit codes and signals, the CLI reference.

The layer above the library and below cli.py: nothing in pipeline/, featstore/, heads/, finetune/ or explain/ imports it.
"""
