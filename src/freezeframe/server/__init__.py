"""Front end: the repository server (``freezeframe serve``)."""
