"""Tests of the seqmodels package, one file per module or topic."""
