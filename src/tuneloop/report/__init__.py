"""Readable reports: figures (PNG, matplotlib's Agg renderer) and the HTML report built from them."""
