"""Storage backends: named objects, atomic writes; nothing above knows which backend."""
