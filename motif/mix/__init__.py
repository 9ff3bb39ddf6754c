"""Data-mix tuning: proxy trainings at several mixtures, a fitted mixing law, a chosen ratio.

`sweep` writes the proxies, `local` and `helm` run them, `results` reads what they measured,
`law` and `regression` model loss against the mixture, `rules` choose, `fit` puts it together,
`plot`/`report` show it, `stagefile` writes the choice back. docs/data-mix.md has the procedure.
"""
