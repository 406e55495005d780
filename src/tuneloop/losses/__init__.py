"""Pure tensor functions: every loss, estimator and reduction of tuneloop. Imports torch only."""
