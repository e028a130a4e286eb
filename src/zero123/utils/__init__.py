"""Small package-wide helpers: atomic writes (:mod:`.atomic`) and output-folder checks (:mod:`.outputs`)."""
