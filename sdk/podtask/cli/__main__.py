"""``python -m podtask.cli``: the ``podtask`` command (``podtask dev`` runs deploy this way)."""

from podtask.cli import main

main()
