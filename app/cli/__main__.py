"""``python -m app.cli``: the ``avatar-service`` command without the installed script."""

from app.cli import main

main()
