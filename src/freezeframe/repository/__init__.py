"""The repository format: keys, blobs, packs, index, trees, snapshots, locks."""
