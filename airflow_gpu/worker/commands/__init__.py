"""One module per ``airflow-gpu-worker`` command: its options and its handler.

Each module's ``add_parser(commands, parents)`` declares the command (the shared ``-q`` and S3
options come in ``parents``, from ``__main__.build_parser``) and sets its ``handler``. In ``als``
every option's ``dest`` is the name of the setting it fills, so its config is built in one
expression; ``options`` holds the value types and the help format the commands share.
"""
