"""Where and how things are kept: table schemas, atomic writes, the data-directory layout, resume,
night history.
"""
