"""`stoker bench`: run the scripts in benchmarks/, keep their figures as records, compare them."""
