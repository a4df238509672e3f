"""Hard negatives as a pipeline stage (`cafe mine`): neighbour search, false-negative rules, versioned shards."""
