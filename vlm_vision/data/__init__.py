"""Training and question data: record shapes, files and mixtures, the memory-mapped record store, the cached scan, chat rendering, a record's tokens."""
