"""One module per store: memory, leveldb, redis, postgres (each imports its client itself);
``_common`` holds what they share."""
