"""Where ratings come from when a user gives none: the synthetic generator and the MovieLens
download.
"""
