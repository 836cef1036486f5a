"""Storage backends under test: each module gives factories of a ``Backend`` (a storage under
test and a second, bare client of the same place), and ``ALL`` lists every factory the storage
contract suite runs over. A backend that needs a server starts it through a session fixture
the factory asks for by name (``request.getfixturevalue``)."""
