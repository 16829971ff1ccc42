"""The page served by ``droplab serve`` at ``/`` (package data: ``index.html``)."""
