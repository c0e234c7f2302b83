class DataError(ValueError):
    """Bad or missing data. The message names the input (file, shard, sample key) and how to fix it."""
