"""`make bench`: side-by-side measurements of the pipeline against plain baselines (`python -m bench.run`)."""
