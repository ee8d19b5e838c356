"""`partita`: the command-line client of a Partita server (and its server-side commands).

`cli.main:main` is the console script; each command group lives in its own module.
"""
