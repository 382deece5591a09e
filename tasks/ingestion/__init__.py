"""Reading the inputs: ratings and movies CSVs checked row by row into the Parquet store.

Bad rows are quarantined; drop folders are read incrementally.
"""
